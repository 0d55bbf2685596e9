//! The broker conformance suite: one test per behaviour of the [`Broker`] contract,
//! run by every implementation from its own `tests/`.
//!
//! # Use
//!
//! Implement [`BrokerHarness`] for your broker and expand
//! [`broker_conformance_tests!`](crate::broker_conformance_tests) with an expression
//! that builds the harness (it is evaluated inside the test's runtime, once per test,
//! and may `.await`):
//!
//! ```ignore
//! // tests/sqlite_conformance.rs
//! celeriac_broker::broker_conformance_tests!(celeriac_broker::testing::SqliteHarness::new());
//! ```
//!
//! Each behaviour becomes its own `#[test]` (so a failure names the behaviour), running
//! on a multi-threaded tokio runtime with an overall timeout. The calling crate needs no
//! tokio dependency of its own.
//!
//! # Rules the tests keep
//!
//! - **Isolation by queue name.** Every test uses fresh queue names (a uuid), so the
//!   tests may run in parallel against one shared store (one Redis server, one
//!   RabbitMQ vhost). For the same reason no test asserts the exact count returned by
//!   [`Broker::restore_expired`] or listed by `queue_stats(&[])`, which see every
//!   queue of the store; they assert what happened to their own messages instead.
//! - **Several handles.** [`BrokerHarness::broker`] returns a new handle to the same
//!   store each time; tests use one handle per simulated process or consumer.
//! - **Skips by capability.** Behaviours a broker may lack ([`Capabilities`](crate::Capabilities)) are
//!   skipped with a note on stderr, never faked.
//! - **Short leases, waits on conditions.** Lease-expiry tests use leases of a few
//!   hundred milliseconds and poll for the expected state with a deadline instead of
//!   sleeping a fixed time; tests that must not lose their lease use long leases.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{Envelope, TaskMessage};
use chrono::Utc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{Broker, Delivery, FetchParams, Publish, QueueStats};

/// Gives the conformance tests access to one store of the broker under test.
#[async_trait]
pub trait BrokerHarness: Send + Sync {
    /// A new handle to the same store each call, as a second process or consumer would
    /// open it.
    async fn broker(&self) -> Arc<dyn Broker>;

    /// Puts raw bytes into `queue` as a message, bypassing the envelope codec. Returns
    /// `false` when the store cannot do that; the malformed-payload test is then
    /// skipped with a note.
    async fn inject_raw(&self, queue: &str, payload: &[u8]) -> bool {
        let _ = (queue, payload);
        false
    }
}

/// Expands to one `#[test]` per conformance behaviour, each building its harness with
/// the given expression (evaluated inside the test's async runtime; it may `.await`).
///
/// ```ignore
/// celeriac_broker::broker_conformance_tests!(MyHarness::connect("redis://127.0.0.1/").await);
/// ```
#[macro_export]
macro_rules! broker_conformance_tests {
    ($harness:expr $(,)?) => {
        $crate::broker_conformance_tests!(@each ($harness)
            fifo_within_priority
            priority_order
            batched_publish_delivered_exactly_once
            fetch_from_several_queues
            no_loss_when_consumer_dies
            renewed_lease_prevents_redelivery
            stale_tag_after_redelivery_is_noop
            reject_requeue_goes_to_the_back
            reject_release_goes_to_the_front
            reject_dead_letter_is_never_delivered_again
            malformed_payload_is_dead_lettered
            purge_removes_ready_messages
            queue_stats_counts_every_state
            declared_queue_is_listed
            delayed_delivery_waits_until_due
            fetch_wait_wakes_on_publish
            concurrent_consumers_get_each_message_once
            worker_heartbeats_are_listed
            broadcast_reaches_every_subscriber
            broadcast_follows_binding_keys
            broadcast_is_not_stored_for_later_subscribers
            publish_once_stores_each_key_once_per_window
        );
    };
    (@each ($harness:expr) $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                $crate::testing::run(stringify!($name), async {
                    let harness = $harness;
                    $crate::testing::conformance::$name(&harness).await;
                });
            }
        )*
    };
}

/// How long one conformance test may run before it fails.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one async test on a fresh multi-threaded runtime, failing it after
/// [`TEST_TIMEOUT`]. Used by [`broker_conformance_tests!`](crate::broker_conformance_tests).
pub fn run(name: &str, test: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the conformance test");
    runtime.block_on(async {
        if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
            panic!("conformance test {name} did not finish within {TEST_TIMEOUT:?}");
        }
    });
}

/// A [`BrokerHarness`] over a SQLite broker in a fresh temporary file.
#[cfg(feature = "sqlite")]
pub struct SqliteHarness {
    dir: tempfile::TempDir,
    options: crate::sqlite::SqliteBrokerOptions,
}

#[cfg(feature = "sqlite")]
impl SqliteHarness {
    /// A harness over a new temporary file with default options (panics if no
    /// temporary directory can be made: this is test support).
    pub fn new() -> SqliteHarness {
        SqliteHarness::with_options(crate::sqlite::SqliteBrokerOptions::default())
    }

    /// A harness over a new temporary file with the given options.
    pub fn with_options(options: crate::sqlite::SqliteBrokerOptions) -> SqliteHarness {
        SqliteHarness {
            dir: tempfile::tempdir().expect("create a temporary directory for the broker file"),
            options,
        }
    }

    /// The broker file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("broker.db")
    }

    /// A new concrete handle on the file.
    pub async fn sqlite_broker(&self) -> crate::sqlite::SqliteBroker {
        crate::sqlite::SqliteBroker::open(self.path(), self.options.clone())
            .await
            .expect("open the SQLite broker")
    }
}

#[cfg(feature = "sqlite")]
impl Default for SqliteHarness {
    fn default() -> Self {
        SqliteHarness::new()
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl BrokerHarness for SqliteHarness {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.sqlite_broker().await)
    }

    async fn inject_raw(&self, queue: &str, payload: &[u8]) -> bool {
        self.sqlite_broker()
            .await
            .insert_raw(queue, payload)
            .await
            .expect("insert a raw payload");
        true
    }
}

/// A lease that never lapses during a test.
const LONG_LEASE: Duration = Duration::from_secs(60);
/// A lease short enough to lapse quickly in lease-expiry tests.
const SHORT_LEASE: Duration = Duration::from_millis(300);
/// How long to wait for an expected state before failing.
const PATIENCE: Duration = Duration::from_secs(20);
/// The wait of a fetch that expects nothing (gives asynchronous brokers a chance to
/// deliver something they should not).
const QUIET_WAIT: Duration = Duration::from_millis(100);
/// Pause between polls of an expected state.
const POLL: Duration = Duration::from_millis(25);

fn skip(test: &str, reason: &str) {
    eprintln!("conformance: skipping {test}: {reason}");
}

fn queue_name(behaviour: &str) -> String {
    format!("conformance.{behaviour}.{}", Uuid::new_v4().simple())
}

fn consumer_name() -> String {
    format!("conformance-{}", Uuid::new_v4().simple())
}

/// A task message whose task id is `id`.
fn envelope(id: &str) -> Envelope {
    TaskMessage::new(
        "celeriac.conformance",
        id,
        vec![serde_json::Value::from(id)],
        serde_json::Map::new(),
    )
    .encode()
}

fn message(queue: &str, id: &str) -> Publish {
    Publish {
        queue: queue.to_string(),
        envelope: envelope(id),
        not_before: None,
    }
}

fn message_with_priority(queue: &str, id: &str, priority: u8) -> Publish {
    let mut publish = message(queue, id);
    publish.envelope.properties.priority = Some(priority);
    publish
}

/// Unique ids `{prefix}-{n}` for `0..n`.
fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn task_id(delivery: &Delivery) -> String {
    delivery
        .envelope
        .task_id_hint()
        .expect("a delivered conformance message has its task id")
        .to_string()
}

fn task_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(task_id).collect()
}

fn fetch_params(queues: &[&str], max: usize, wait: Duration, lease: Duration) -> FetchParams {
    FetchParams {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        max,
        wait,
        consumer: consumer_name(),
        lease,
    }
}

async fn fetch(
    broker: &dyn Broker,
    queue: &str,
    max: usize,
    wait: Duration,
    lease: Duration,
) -> Vec<Delivery> {
    let params = fetch_params(&[queue], max, wait, lease);
    let got = broker.fetch(&params).await.expect("fetch");
    assert!(
        got.len() <= max,
        "fetch returned {} messages, more than max {max}",
        got.len()
    );
    got
}

/// Fetches (without acking) until `count` messages arrived; fails after [`PATIENCE`].
async fn fetch_exactly(
    broker: &dyn Broker,
    queue: &str,
    count: usize,
    lease: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "expected {count} messages from {queue}, got {} within {PATIENCE:?}",
            got.len()
        );
        got.extend(
            fetch(
                broker,
                queue,
                count - got.len(),
                Duration::from_millis(250),
                lease,
            )
            .await,
        );
    }
    got
}

/// Fetches and acks in batches of `batch` until `count` messages arrived; returns
/// their task ids in delivery order.
async fn drain(broker: &dyn Broker, queue: &str, count: usize, batch: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "expected {count} messages from {queue}, got {} within {PATIENCE:?}",
            seen.len()
        );
        let got = fetch(broker, queue, batch, Duration::from_millis(250), LONG_LEASE).await;
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        seen.extend(task_ids(&got));
        broker.ack(&tags).await.expect("ack");
    }
    seen
}

async fn assert_nothing_to_fetch(broker: &dyn Broker, queue: &str, context: &str) {
    let got = fetch(broker, queue, 10, QUIET_WAIT, LONG_LEASE).await;
    assert!(
        got.is_empty(),
        "{context}: expected nothing to fetch from {queue}, got {:?}",
        task_ids(&got)
    );
}

async fn stats(broker: &dyn Broker, queue: &str) -> QueueStats {
    let mut all = broker
        .queue_stats(&[queue.to_string()])
        .await
        .expect("queue_stats");
    assert_eq!(all.len(), 1, "queue_stats for one queue returned {all:?}");
    let one = all.remove(0);
    assert_eq!(one.name, queue);
    one
}

/// Stats of `queue` once `(ready, held, dead_letters)` equals `expected`, or the last
/// ones read after two seconds. RabbitMQ's message counts (`queue.declare`, passive)
/// trail its deliveries and requeues by a moment, quorum queues more than classic
/// ones; a broker whose counts are exact matches on the first read.
async fn stats_settled(broker: &dyn Broker, queue: &str, expected: (u64, u64, u64)) -> QueueStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let counts = stats(broker, queue).await;
        if (counts.ready, counts.held, counts.dead_letters) == expected
            || tokio::time::Instant::now() >= deadline
        {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restores lapsed leases until a fetch from `queue` returns a message.
async fn redeliver(broker: &dyn Broker, queue: &str, lease: Duration) -> (Delivery, u64) {
    let deadline = Instant::now() + PATIENCE;
    let mut restored = 0;
    loop {
        restored += broker.restore_expired().await.expect("restore_expired");
        if let Some(delivery) = fetch(broker, queue, 1, Duration::ZERO, lease).await.pop() {
            return (delivery, restored);
        }
        assert!(
            Instant::now() < deadline,
            "the message of {queue} was not redelivered within {PATIENCE:?} after its lease lapsed"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A broadcast on `exchange` whose body names `id` (a JSON string) and whose headers
/// carry it, as events and pidbox messages do.
fn broadcast_message(exchange: &str, routing_key: &str, id: &str) -> crate::Broadcast {
    let mut headers = serde_json::Map::new();
    headers.insert("clock".into(), serde_json::Value::from(7));
    headers.insert("conformance_id".into(), serde_json::Value::from(id));
    let mut envelope = Envelope {
        headers: headers.into(),
        properties: Default::default(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: serde_json::to_vec(&serde_json::json!({"id": id})).expect("JSON body"),
    };
    envelope.properties.delivery_mode = Some(1);
    crate::Broadcast {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        envelope,
    }
}

/// The id a [`broadcast_message`] carries.
fn broadcast_id(message: &crate::BroadcastMessage) -> String {
    let body: serde_json::Value =
        serde_json::from_slice(&message.envelope.body).expect("a JSON broadcast body");
    body["id"].as_str().expect("a broadcast id").to_string()
}

/// Subscribes, or `None` (with a note) when the broker has no broadcasts.
async fn subscribe_or_skip(
    broker: &dyn Broker,
    test: &str,
    exchange: &str,
    routing_key: Option<&str>,
) -> Option<crate::Subscription> {
    let params = crate::SubscribeParams {
        exchange: exchange.to_string(),
        routing_key: routing_key.map(str::to_string),
    };
    match broker.subscribe(&params).await {
        Err(crate::BrokerError::Unsupported { .. }) => {
            skip(test, "this broker has no broadcasts");
            None
        }
        other => Some(other.expect("subscribe")),
    }
}

/// The next message of a subscription; fails after [`PATIENCE`].
async fn next_broadcast(
    subscription: &mut crate::Subscription,
    context: &str,
) -> crate::BroadcastMessage {
    match tokio::time::timeout(PATIENCE, subscription.recv()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("{context}: the subscription ended"),
        Err(_) => panic!("{context}: no broadcast within {PATIENCE:?}"),
    }
}

/// The ids of the next `n` messages of a subscription.
async fn next_ids(subscription: &mut crate::Subscription, n: usize, context: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(broadcast_id(&next_broadcast(subscription, context).await));
    }
    ids
}

/// The behaviours, one function each; see the module docs for the rules they keep.
pub mod conformance {
    use super::*;
    use crate::{DeadLetterQuery, RejectAction};
    use celeriac_core::routing::Queue;

    /// Messages of one priority come out in publish order, whether published one by
    /// one or in a batch, and a fetch never returns more than `max`.
    pub async fn fifo_within_priority(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let queue = queue_name("fifo");
        let expected = ids("fifo", 30);
        for id in &expected[..10] {
            broker
                .publish(vec![message(&queue, id)])
                .await
                .expect("publish");
        }
        let batch = expected[10..]
            .iter()
            .map(|id| message(&queue, id))
            .collect();
        broker.publish(batch).await.expect("publish a batch");

        let got = drain(&*broker, &queue, expected.len(), 4).await;
        assert_eq!(
            got, expected,
            "messages of one priority must come out in publish order"
        );
        assert_nothing_to_fetch(&*broker, &queue, "after draining").await;
    }

    /// Messages are served by priority in the direction the broker declares, FIFO
    /// within a priority.
    pub async fn priority_order(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let order = broker.capabilities().priority;
        if order == crate::PriorityOrder::None {
            return skip("priority_order", "the broker ignores priorities");
        }
        let queue = queue_name("priority");
        let published = [
            ("a", 0),
            ("b", 9),
            ("c", 3),
            ("d", 6),
            ("e", 9),
            ("f", 0),
            ("g", 3),
        ];
        let batch = published
            .iter()
            .map(|(id, p)| message_with_priority(&queue, id, *p))
            .collect();
        broker.publish(batch).await.expect("publish");

        let mut expected = published.to_vec();
        match order {
            // Stable sorts keep publish order within a priority.
            crate::PriorityOrder::HigherFirst => {
                expected.sort_by_key(|(_, p)| std::cmp::Reverse(*p))
            }
            _ => expected.sort_by_key(|(_, p)| *p),
        }
        let expected: Vec<String> = expected.iter().map(|(id, _)| id.to_string()).collect();
        let got = drain(&*broker, &queue, expected.len(), expected.len()).await;
        assert_eq!(got, expected, "priority order {order:?} not respected");
    }

    /// A batch of 1,000 messages published in one call is delivered, each exactly once.
    pub async fn batched_publish_delivered_exactly_once(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let queue = queue_name("batch");
        let expected = ids("batch", 1000);
        broker
            .publish(expected.iter().map(|id| message(&queue, id)).collect())
            .await
            .expect("publish 1,000 messages in one batch");

        let got = drain(&*broker, &queue, expected.len(), 100).await;
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "a message was delivered twice");
        assert_eq!(unique, expected.iter().collect::<HashSet<_>>());
        assert_nothing_to_fetch(&*broker, &queue, "after draining the batch").await;
        let counts = stats(&*broker, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 0), "{counts:?}");
    }

    /// One fetch takes from several queues and reports where each message came from.
    pub async fn fetch_from_several_queues(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let first = queue_name("multi-a");
        let second = queue_name("multi-b");
        let mut batch = Vec::new();
        for i in 0..3 {
            batch.push(message(&first, &format!("a-{i}")));
            batch.push(message(&second, &format!("b-{i}")));
        }
        broker.publish(batch).await.expect("publish");

        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while got.len() < 6 {
            assert!(
                Instant::now() < deadline,
                "got only {} of 6 messages",
                got.len()
            );
            let params = fetch_params(
                &[&first, &second],
                10,
                Duration::from_millis(250),
                LONG_LEASE,
            );
            got.extend(broker.fetch(&params).await.expect("fetch"));
        }
        for delivery in &got {
            let id = task_id(delivery);
            let origin = if id.starts_with("a-") {
                &first
            } else {
                &second
            };
            assert_eq!(&delivery.queue, origin, "{id} reported the wrong queue");
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&tags).await.expect("ack");
        assert_nothing_to_fetch(&*broker, &first, "after acking").await;
        assert_nothing_to_fetch(&*broker, &second, "after acking").await;
    }

    /// A consumer that dies without acking loses nothing: after its lease lapses the
    /// message is restored and delivered to another consumer with delivery count 2.
    pub async fn no_loss_when_consumer_dies(h: &dyn BrokerHarness) {
        let dying = h.broker().await;
        if !dying.capabilities().leases {
            return skip("no_loss_when_consumer_dies", "the broker has no leases");
        }
        let queue = queue_name("crash");
        dying
            .publish(vec![message(&queue, "survivor")])
            .await
            .expect("publish");
        let first = fetch_exactly(&*dying, &queue, 1, Duration::from_secs(1))
            .await
            .remove(0);
        assert_eq!(first.delivery_count, 1);
        drop(dying); // dies without ack

        let other = h.broker().await;
        assert_nothing_to_fetch(&*other, &queue, "while the dead consumer's lease runs").await;
        let (second, restored) = redeliver(&*other, &queue, LONG_LEASE).await;
        assert!(
            restored >= 1,
            "restore_expired never reported the restored message"
        );
        assert_eq!(task_id(&second), "survivor");
        assert_eq!(
            second.delivery_count, 2,
            "the redelivery must count as the second delivery"
        );
        assert_ne!(second.tag, first.tag, "a redelivery must have a new tag");

        other.ack(&[second.tag]).await.expect("ack");
        assert_nothing_to_fetch(&*other, &queue, "after acking the redelivery").await;
        let counts = stats(&*other, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 0), "{counts:?}");
    }

    /// While the holder renews its lease, well past the original lease, the message is
    /// neither restored nor delivered to anyone else.
    pub async fn renewed_lease_prevents_redelivery(h: &dyn BrokerHarness) {
        let holder = h.broker().await;
        if !holder.capabilities().leases {
            return skip(
                "renewed_lease_prevents_redelivery",
                "the broker has no leases",
            );
        }
        let lease = Duration::from_millis(600);
        let queue = queue_name("renew");
        holder
            .publish(vec![message(&queue, "long-task")])
            .await
            .expect("publish");
        let held = fetch_exactly(&*holder, &queue, 1, lease).await.remove(0);

        let other = h.broker().await;
        let until = Instant::now() + lease * 3;
        while Instant::now() < until {
            holder
                .renew_leases(std::slice::from_ref(&held.tag), lease)
                .await
                .expect("renew_leases");
            other.restore_expired().await.expect("restore_expired");
            let got = fetch(&*other, &queue, 1, Duration::ZERO, LONG_LEASE).await;
            assert!(
                got.is_empty(),
                "delivered twice while the lease was renewed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        other.restore_expired().await.expect("restore_expired");
        assert_nothing_to_fetch(&*other, &queue, "after renewing past the original lease").await;
        let counts = stats(&*other, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 1), "{counts:?}");

        holder.ack(&[held.tag]).await.expect("ack");
        let counts = stats(&*other, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 0), "{counts:?}");
    }

    /// After a lapsed lease and a redelivery, the first holder's tag is dead: its ack,
    /// renew and rejects change nothing, and the second holder's ack removes the message.
    pub async fn stale_tag_after_redelivery_is_noop(h: &dyn BrokerHarness) {
        let first = h.broker().await;
        let caps = first.capabilities();
        if !caps.leases {
            return skip(
                "stale_tag_after_redelivery_is_noop",
                "the broker has no leases",
            );
        }
        let queue = queue_name("stale");
        first
            .publish(vec![message(&queue, "contested")])
            .await
            .expect("publish");
        let stale = fetch_exactly(&*first, &queue, 1, SHORT_LEASE)
            .await
            .remove(0);

        let second = h.broker().await;
        let (current, _) = redeliver(&*second, &queue, LONG_LEASE).await;
        assert_eq!(current.delivery_count, 2);
        assert_ne!(current.tag, stale.tag);

        first
            .ack(std::slice::from_ref(&stale.tag))
            .await
            .expect("ack with a stale tag");
        first
            .renew_leases(std::slice::from_ref(&stale.tag), SHORT_LEASE)
            .await
            .expect("renew with a stale tag");
        first
            .reject(&stale.tag, RejectAction::Requeue)
            .await
            .expect("requeue with a stale tag");
        first
            .reject(&stale.tag, RejectAction::Release)
            .await
            .expect("release with a stale tag");
        if caps.dead_letters {
            first
                .reject(
                    &stale.tag,
                    RejectAction::DeadLetter {
                        reason: "stale".into(),
                    },
                )
                .await
                .expect("dead-letter with a stale tag");
        }
        let counts = stats(&*second, &queue).await;
        assert_eq!(
            (counts.ready, counts.held, counts.dead_letters),
            (0, 1, 0),
            "a stale tag changed the message: {counts:?}"
        );
        assert_nothing_to_fetch(&*second, &queue, "after the stale operations").await;

        second.ack(&[current.tag]).await.expect("ack");
        let counts = stats(&*second, &queue).await;
        assert_eq!(
            (counts.ready, counts.held),
            (0, 0),
            "the current tag's ack did not remove it: {counts:?}"
        );
        assert_nothing_to_fetch(&*second, &queue, "after the current ack").await;
    }

    /// `Requeue` puts the message at the end of its queue and counts the delivery.
    pub async fn reject_requeue_goes_to_the_back(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let queue = queue_name("requeue");
        let batch = ["a", "b", "c"]
            .iter()
            .map(|id| message(&queue, id))
            .collect();
        broker.publish(batch).await.expect("publish");
        let first = fetch_exactly(&*broker, &queue, 1, LONG_LEASE)
            .await
            .remove(0);
        assert_eq!(task_id(&first), "a");
        broker
            .reject(&first.tag, RejectAction::Requeue)
            .await
            .expect("reject Requeue");

        let rest = fetch_exactly(&*broker, &queue, 3, LONG_LEASE).await;
        assert_eq!(
            task_ids(&rest),
            ["b", "c", "a"],
            "a requeued message goes to the back"
        );
        assert_eq!(
            rest[2].delivery_count, 2,
            "a requeued message was delivered once before"
        );
        let tags: Vec<_> = rest.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&tags).await.expect("ack");
        assert_nothing_to_fetch(&*broker, &queue, "after acking").await;
    }

    /// `Release` puts the message back at the front of its queue.
    pub async fn reject_release_goes_to_the_front(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let queue = queue_name("release");
        let batch = ["a", "b", "c"]
            .iter()
            .map(|id| message(&queue, id))
            .collect();
        broker.publish(batch).await.expect("publish");
        let first = fetch_exactly(&*broker, &queue, 1, LONG_LEASE)
            .await
            .remove(0);
        assert_eq!(task_id(&first), "a");
        broker
            .reject(&first.tag, RejectAction::Release)
            .await
            .expect("reject Release");

        let all = fetch_exactly(&*broker, &queue, 3, LONG_LEASE).await;
        assert_eq!(
            task_ids(&all),
            ["a", "b", "c"],
            "a released message goes back to the front"
        );
        assert_ne!(
            all[0].tag, first.tag,
            "the released delivery's tag must not be reused"
        );
        let tags: Vec<_> = all.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&tags).await.expect("ack");
        assert_nothing_to_fetch(&*broker, &queue, "after acking").await;
    }

    /// `DeadLetter` moves the message to the dead letters with its reason; it is never
    /// delivered again.
    pub async fn reject_dead_letter_is_never_delivered_again(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        if !broker.capabilities().dead_letters {
            return skip(
                "reject_dead_letter_is_never_delivered_again",
                "the broker has no dead letters",
            );
        }
        let queue = queue_name("dead");
        let batch = ["doomed", "fine"]
            .iter()
            .map(|id| message(&queue, id))
            .collect();
        broker.publish(batch).await.expect("publish");
        let doomed = fetch_exactly(&*broker, &queue, 1, LONG_LEASE)
            .await
            .remove(0);
        assert_eq!(task_id(&doomed), "doomed");
        let reason = format!("conformance reason {}", Uuid::new_v4());
        let before = Utc::now() - chrono::Duration::seconds(60);
        broker
            .reject(
                &doomed.tag,
                RejectAction::DeadLetter {
                    reason: reason.clone(),
                },
            )
            .await
            .expect("reject DeadLetter");

        let query = DeadLetterQuery {
            queue: Some(queue.clone()),
            limit: 10,
        };
        let dead = broker.dead_letters(&query).await.expect("dead_letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].reason, reason);
        assert_eq!(dead[0].queue, queue);
        assert!(
            dead[0].at >= before,
            "dead-letter time {} is not recent",
            dead[0].at
        );
        let stored = Envelope::from_kombu_json(&dead[0].payload)
            .expect("the dead letter keeps the envelope");
        assert_eq!(stored.task_id_hint(), Some("doomed"));

        broker.restore_expired().await.expect("restore_expired");
        let rest = drain(&*broker, &queue, 1, 10).await;
        assert_eq!(rest, ["fine"]);
        assert_nothing_to_fetch(&*broker, &queue, "after dead-lettering").await;
        assert_eq!(stats(&*broker, &queue).await.dead_letters, 1);
    }

    /// A stored payload that cannot be decoded is dead-lettered with a reason, never
    /// returned, never lost, and does not block the messages behind it.
    pub async fn malformed_payload_is_dead_lettered(h: &dyn BrokerHarness) {
        const MALFORMED: &[u8] = b"{\"body\": this is not a kombu envelope";
        let broker = h.broker().await;
        if !broker.capabilities().dead_letters {
            return skip(
                "malformed_payload_is_dead_lettered",
                "the broker has no dead letters",
            );
        }
        let queue = queue_name("malformed");
        if !h.inject_raw(&queue, MALFORMED).await {
            return skip(
                "malformed_payload_is_dead_lettered",
                "the harness cannot inject raw payloads",
            );
        }
        broker
            .publish(vec![message(&queue, "good")])
            .await
            .expect("publish");

        let got = drain(&*broker, &queue, 1, 10).await;
        assert_eq!(got, ["good"], "only the decodable message is delivered");
        assert_nothing_to_fetch(&*broker, &queue, "after the malformed payload").await;
        let query = DeadLetterQuery {
            queue: Some(queue.clone()),
            limit: 0,
        };
        let dead = broker.dead_letters(&query).await.expect("dead_letters");
        assert_eq!(
            dead.len(),
            1,
            "the malformed payload must be dead-lettered: {dead:?}"
        );
        assert_eq!(
            dead[0].payload, MALFORMED,
            "the dead letter keeps the raw bytes"
        );
        assert!(
            !dead[0].reason.trim().is_empty(),
            "the dead letter has a reason"
        );
        let counts = stats_settled(&*broker, &queue, (0, 0, 1)).await;
        assert_eq!(
            (counts.ready, counts.held, counts.dead_letters),
            (0, 0, 1),
            "the malformed payload must leave the queue: {counts:?}"
        );
    }

    /// `purge` deletes the ready messages, returns how many, and leaves held ones.
    pub async fn purge_removes_ready_messages(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let queue = queue_name("purge");
        broker
            .publish(
                ids("purge", 5)
                    .iter()
                    .map(|id| message(&queue, id))
                    .collect(),
            )
            .await
            .expect("publish");
        let held = fetch_exactly(&*broker, &queue, 1, LONG_LEASE)
            .await
            .remove(0);

        assert_eq!(broker.purge(&queue).await.expect("purge"), 4);
        let counts = stats(&*broker, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 1), "{counts:?}");
        assert_nothing_to_fetch(&*broker, &queue, "after purge").await;
        assert_eq!(broker.purge(&queue).await.expect("purge again"), 0);

        broker.ack(&[held.tag]).await.expect("ack the held message");
        let counts = stats(&*broker, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 0), "{counts:?}");
    }

    /// `queue_stats` counts ready, scheduled, held and dead-lettered messages, for the
    /// listed queue and among all queues.
    pub async fn queue_stats_counts_every_state(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let caps = broker.capabilities();
        let queue = queue_name("stats");
        assert_eq!(
            stats(&*broker, &queue).await,
            QueueStats {
                name: queue.clone(),
                ..QueueStats::default()
            }
        );

        broker
            .publish(
                ids("stats", 4)
                    .iter()
                    .map(|id| message(&queue, id))
                    .collect(),
            )
            .await
            .expect("publish");
        if caps.delayed_delivery {
            let mut later = message(&queue, "later");
            later.not_before = Some(Utc::now() + chrono::Duration::seconds(60));
            broker
                .publish(vec![later])
                .await
                .expect("publish a delayed message");
        }
        let taken = fetch_exactly(&*broker, &queue, 2, LONG_LEASE).await;
        if caps.dead_letters {
            broker
                .reject(
                    &taken[1].tag,
                    RejectAction::DeadLetter {
                        reason: "stats".into(),
                    },
                )
                .await
                .expect("dead-letter");
        } else {
            broker.ack(&[taken[1].tag.clone()]).await.expect("ack");
        }

        let expected = QueueStats {
            name: queue.clone(),
            ready: 2,
            scheduled: u64::from(caps.delayed_delivery),
            held: 1,
            dead_letters: u64::from(caps.dead_letters),
        };
        assert_eq!(stats(&*broker, &queue).await, expected);
        let all = broker
            .queue_stats(&[])
            .await
            .expect("queue_stats of all queues");
        let listed = all.iter().find(|s| s.name == queue);
        assert_eq!(
            listed,
            Some(&expected),
            "queue_stats(&[]) must list every known queue"
        );

        broker.ack(&[taken[0].tag.clone()]).await.expect("ack");
        broker.purge(&queue).await.expect("purge");
        let counts = stats(&*broker, &queue).await;
        assert_eq!(
            (counts.ready, counts.scheduled, counts.held),
            (0, 0, 0),
            "{counts:?}"
        );
    }

    /// A declared queue is listed by `queue_stats(&[])` even while empty; declaring
    /// again is harmless.
    pub async fn declared_queue_is_listed(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let name = queue_name("declared");
        let queue = Queue::new(name.clone());
        broker.declare_queue(&queue).await.expect("declare_queue");
        broker
            .declare_queue(&queue)
            .await
            .expect("declare_queue again");
        let all = broker.queue_stats(&[]).await.expect("queue_stats");
        let listed = all.iter().filter(|s| s.name == name).collect::<Vec<_>>();
        assert_eq!(
            listed,
            [&QueueStats {
                name: name.clone(),
                ..QueueStats::default()
            }],
            "an empty declared queue is listed once"
        );
    }

    /// A worker's heartbeats are listed (latest state wins), and a clean shutdown
    /// marks it offline. Brokers without a worker registry skip.
    pub async fn worker_heartbeats_are_listed(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        let now = chrono::Utc::now();
        let mut info = crate::WorkerInfo {
            hostname: format!("{}@conformance", queue_name("worker")),
            pid: 42,
            queues: vec!["celery".into()],
            active: 1,
            processed: 10,
            started_at: now,
            last_heartbeat: now,
            freq: 2.0,
            online: true,
        };
        match broker.worker_heartbeat(&info).await {
            Err(crate::BrokerError::Unsupported { .. }) => {
                eprintln!("skipped: this broker has no worker registry");
                return;
            }
            other => other.expect("worker_heartbeat"),
        }
        info.processed = 11;
        info.last_heartbeat = now + chrono::Duration::seconds(2);
        broker
            .worker_heartbeat(&info)
            .await
            .expect("second heartbeat");
        let other = h.broker().await;
        let listed: Vec<_> = other
            .workers()
            .await
            .expect("workers")
            .into_iter()
            .filter(|w| w.hostname == info.hostname)
            .collect();
        assert_eq!(
            listed,
            vec![info.clone()],
            "one row per worker, the latest heartbeat"
        );
        assert!(listed[0].is_alive(info.last_heartbeat));
        assert!(!listed[0].is_alive(info.last_heartbeat + chrono::Duration::seconds(5)));
        info.online = false;
        broker.worker_heartbeat(&info).await.expect("offline");
        let gone = other.workers().await.expect("workers");
        let row = gone
            .iter()
            .find(|w| w.hostname == info.hostname)
            .expect("still listed");
        assert!(!row.online && !row.is_alive(info.last_heartbeat));
    }

    /// A message with a future `not_before` is not fetched until due (and does not
    /// block due messages behind it), then is.
    pub async fn delayed_delivery_waits_until_due(h: &dyn BrokerHarness) {
        let broker = h.broker().await;
        if !broker.capabilities().delayed_delivery {
            return skip(
                "delayed_delivery_waits_until_due",
                "the broker has no delayed delivery",
            );
        }
        let queue = queue_name("eta");
        let due = Utc::now() + chrono::Duration::milliseconds(800);
        let mut delayed = message(&queue, "delayed");
        delayed.not_before = Some(due);
        broker
            .publish(vec![delayed])
            .await
            .expect("publish a delayed message");
        broker
            .publish(vec![message(&queue, "now")])
            .await
            .expect("publish");

        let first = fetch(&*broker, &queue, 10, Duration::ZERO, LONG_LEASE).await;
        assert_eq!(task_ids(&first), ["now"], "only the due message is served");
        broker.ack(&[first[0].tag.clone()]).await.expect("ack");
        let counts = stats(&*broker, &queue).await;
        assert_eq!((counts.ready, counts.scheduled), (0, 1), "{counts:?}");

        let deadline = Instant::now() + PATIENCE;
        let delivered = loop {
            if let Some(d) = fetch(&*broker, &queue, 1, Duration::from_millis(250), LONG_LEASE)
                .await
                .pop()
            {
                break d;
            }
            assert!(
                Instant::now() < deadline,
                "the delayed message never became due"
            );
        };
        let early = due - Utc::now();
        assert!(
            early < chrono::Duration::milliseconds(50),
            "the delayed message was delivered {early} before it was due"
        );
        assert_eq!(task_id(&delivered), "delayed");
        broker.ack(&[delivered.tag]).await.expect("ack");
        assert_nothing_to_fetch(&*broker, &queue, "after acking").await;
    }

    /// A fetch waiting on an empty queue returns promptly when another handle
    /// publishes, well before its wait expires.
    pub async fn fetch_wait_wakes_on_publish(h: &dyn BrokerHarness) {
        let consumer = h.broker().await;
        let producer = h.broker().await;
        let queue = queue_name("wake");
        let wait = Duration::from_secs(10);
        let params = fetch_params(&[&queue], 1, wait, LONG_LEASE);
        let waiting = tokio::spawn(async move { consumer.fetch(&params).await });

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the fetch returned before anything was published"
        );
        producer
            .publish(vec![message(&queue, "wake-up")])
            .await
            .expect("publish");
        let published = Instant::now();
        let got = tokio::time::timeout(wait + PATIENCE, waiting)
            .await
            .expect("the fetch outlived its wait")
            .expect("the fetch task panicked")
            .expect("fetch");
        let latency = published.elapsed();
        assert_eq!(task_ids(&got), ["wake-up"]);
        assert!(
            latency < Duration::from_secs(2),
            "the waiting fetch returned {latency:?} after the publish (wait was {wait:?})"
        );
        producer.ack(&[got[0].tag.clone()]).await.expect("ack");
    }

    /// Four consumers with their own handles, fetching in loops while messages are
    /// published, get all 2,000 messages, each exactly once.
    pub async fn concurrent_consumers_get_each_message_once(h: &dyn BrokerHarness) {
        const TOTAL: usize = 2000;
        const CONSUMERS: usize = 4;
        let queue = queue_name("concurrent");
        let seen: Arc<parking_lot::Mutex<HashMap<String, usize>>> = Arc::default();
        let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deadline = Instant::now() + PATIENCE * 2;

        let mut consumers = Vec::new();
        for _ in 0..CONSUMERS {
            let broker = h.broker().await;
            let (queue, seen, delivered) =
                (queue.clone(), Arc::clone(&seen), Arc::clone(&delivered));
            consumers.push(tokio::spawn(async move {
                let params = fetch_params(&[&queue], 16, Duration::from_millis(100), LONG_LEASE);
                while delivered.load(std::sync::atomic::Ordering::SeqCst) < TOTAL
                    && Instant::now() < deadline
                {
                    let got = broker.fetch(&params).await.expect("fetch");
                    {
                        let mut seen = seen.lock();
                        for delivery in &got {
                            *seen.entry(task_id(delivery)).or_default() += 1;
                        }
                    }
                    delivered.fetch_add(got.len(), std::sync::atomic::Ordering::SeqCst);
                    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
                    broker.ack(&tags).await.expect("ack");
                }
            }));
        }
        let producer = h.broker().await;
        let expected = ids("concurrent", TOTAL);
        for chunk in expected.chunks(250) {
            producer
                .publish(chunk.iter().map(|id| message(&queue, id)).collect())
                .await
                .expect("publish");
        }
        for consumer in consumers {
            consumer.await.expect("a consumer panicked");
        }

        let seen = std::mem::take(&mut *seen.lock());
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
        let missing: Vec<_> = expected
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} messages never delivered, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        assert_eq!(seen.len(), TOTAL);
        assert_nothing_to_fetch(&*producer, &queue, "after the consumers finished").await;
        let counts = stats(&*producer, &queue).await;
        assert_eq!((counts.ready, counts.held), (0, 0), "{counts:?}");
    }
    /// Every subscriber of an exchange receives each broadcast once, in publish
    /// order, with its routing key, headers and body intact; other exchanges' are not
    /// received.
    pub async fn broadcast_reaches_every_subscriber(h: &dyn BrokerHarness) {
        let test = "broadcast_reaches_every_subscriber";
        let exchange = queue_name("fanout");
        let publisher = h.broker().await;
        let (first, second) = (h.broker().await, h.broker().await);
        let Some(mut a) = subscribe_or_skip(&*first, test, &exchange, None).await else {
            return;
        };
        let Some(mut b) = subscribe_or_skip(&*second, test, &exchange, None).await else {
            return;
        };
        let mut same_handle = subscribe_or_skip(&*publisher, test, &exchange, None)
            .await
            .expect("subscribe on the publishing handle");
        let other_exchange = format!("{exchange}.other");
        publisher
            .broadcast(broadcast_message(&other_exchange, "", "elsewhere"))
            .await
            .expect("broadcast on another exchange");
        let sent = [("", "b-0"), ("worker.online", "b-1"), ("task.multi", "b-2")];
        for (routing_key, id) in sent {
            publisher
                .broadcast(broadcast_message(&exchange, routing_key, id))
                .await
                .expect("broadcast");
        }
        let expected: Vec<String> = sent.iter().map(|(_, id)| id.to_string()).collect();
        for (name, subscription) in [("a", &mut a), ("b", &mut b), ("same", &mut same_handle)] {
            let mut got = Vec::new();
            for (routing_key, id) in sent {
                let message = next_broadcast(subscription, name).await;
                assert_eq!(message.exchange, exchange, "subscriber {name}");
                assert_eq!(message.routing_key, routing_key, "subscriber {name}");
                assert_eq!(
                    message.envelope.headers.get("conformance_id"),
                    Some(&serde_json::Value::from(id)),
                    "subscriber {name}: headers travel"
                );
                assert_eq!(message.envelope.properties.delivery_mode, Some(1));
                let info = message
                    .envelope
                    .properties
                    .delivery_info
                    .clone()
                    .expect("delivery_info is set");
                assert_eq!(
                    (info.exchange.as_str(), info.routing_key.as_str()),
                    (exchange.as_str(), routing_key)
                );
                got.push(broadcast_id(&message));
            }
            assert_eq!(got, expected, "subscriber {name}: each once, in order");
        }
        // Nothing else is pending: a marker sent now is the next message.
        publisher
            .broadcast(broadcast_message(&exchange, "", "marker"))
            .await
            .expect("broadcast marker");
        assert_eq!(next_ids(&mut a, 1, "marker").await, vec!["marker"]);
        assert_eq!(next_ids(&mut b, 1, "marker").await, vec!["marker"]);
    }

    /// A subscription with a binding key receives only matching routing keys (topic
    /// rules, `#` for any number of words; `""` only an empty key, as kombu's pidbox
    /// binds); one without a key receives everything of its exchange.
    pub async fn broadcast_follows_binding_keys(h: &dyn BrokerHarness) {
        let test = "broadcast_follows_binding_keys";
        let exchange = queue_name("topic");
        let broker = h.broker().await;
        let Some(mut workers) =
            subscribe_or_skip(&*broker, test, &exchange, Some("worker.#")).await
        else {
            return;
        };
        let mut empty = subscribe_or_skip(&*broker, test, &exchange, Some(""))
            .await
            .expect("subscribe");
        let mut one_word = subscribe_or_skip(&*broker, test, &exchange, Some("task.*"))
            .await
            .expect("subscribe");
        let mut everything = subscribe_or_skip(&*broker, test, &exchange, Some("#"))
            .await
            .expect("subscribe");
        let sent = [
            ("worker.online", "t-0"),
            ("task.multi", "t-1"),
            ("", "t-2"),
            ("worker.heartbeat", "t-3"),
            ("task.succeeded.extra", "t-4"),
            ("workers", "t-5"),
            ("worker", "t-6"),
        ];
        for (routing_key, id) in sent {
            broker
                .broadcast(broadcast_message(&exchange, routing_key, id))
                .await
                .expect("broadcast");
        }
        // A marker every subscription matches closes each check: whatever arrives
        // before it was delivered, whatever does not was filtered.
        let markers = [
            ("worker.end", &mut workers),
            ("", &mut empty),
            ("task.end", &mut one_word),
        ];
        for (routing_key, _) in &markers {
            broker
                .broadcast(broadcast_message(&exchange, routing_key, "marker"))
                .await
                .expect("broadcast marker");
        }
        let expect = |keys: &[&str]| -> Vec<String> {
            let mut ids: Vec<String> = sent
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(_, id)| id.to_string())
                .collect();
            ids.push("marker".into());
            ids
        };
        let cases = [
            (
                expect(&["worker.online", "worker.heartbeat", "worker"]),
                "worker.#",
            ),
            (expect(&[""]), "\"\""),
            (expect(&["task.multi"]), "task.*"),
        ];
        for ((expected, pattern), (_, subscription)) in cases.into_iter().zip(markers) {
            let got = next_ids(subscription, expected.len(), pattern).await;
            assert_eq!(got, expected, "binding key {pattern}");
        }
        let all = next_ids(&mut everything, sent.len() + 3, "#").await;
        let mut expected_all: Vec<String> = sent.iter().map(|(_, id)| id.to_string()).collect();
        expected_all.extend(["marker".to_string(), "marker".into(), "marker".into()]);
        assert_eq!(all, expected_all, "binding key #");
    }

    /// Broadcasts are fire-and-forget: one sent before a subscription exists is not
    /// received by it; one sent after is. A dropped subscription does not disturb
    /// the others.
    pub async fn broadcast_is_not_stored_for_later_subscribers(h: &dyn BrokerHarness) {
        let test = "broadcast_is_not_stored_for_later_subscribers";
        let exchange = queue_name("late");
        let broker = h.broker().await;
        let Some(early) = subscribe_or_skip(&*broker, test, &exchange, None).await else {
            return;
        };
        broker
            .broadcast(broadcast_message(&exchange, "", "before"))
            .await
            .expect("broadcast");
        let mut late = subscribe_or_skip(&*broker, test, &exchange, None)
            .await
            .expect("subscribe");
        drop(early);
        broker
            .broadcast(broadcast_message(&exchange, "", "after"))
            .await
            .expect("broadcast");
        assert_eq!(
            next_ids(&mut late, 1, "late subscriber").await,
            vec!["after"],
            "a subscriber receives only what was sent after it subscribed"
        );
        assert!(late.try_recv().is_none());
    }

    /// `publish_once` stores a key's batch once: a second call with the key (also
    /// concurrent ones) stores nothing and returns `false`, other keys are independent,
    /// and once the window ends the key publishes again.
    pub async fn publish_once_stores_each_key_once_per_window(h: &dyn BrokerHarness) {
        let test = "publish_once_stores_each_key_once_per_window";
        let broker = h.broker().await;
        if !broker.capabilities().idempotent_publish {
            return skip(test, "the broker has no idempotent publish");
        }
        let queue = queue_name("once");
        let key = format!("{queue}-first");
        let window = Duration::from_secs(60);
        let first = vec![message(&queue, "once-1"), message(&queue, "once-2")];
        assert!(broker
            .publish_once(&key, window, first)
            .await
            .expect("publish once"));
        let again = vec![message(&queue, "once-dup")];
        assert!(
            !broker
                .publish_once(&key, window, again)
                .await
                .expect("publish again"),
            "a second publish under the same key must store nothing"
        );
        let other = vec![message(&queue, "once-3")];
        assert!(broker
            .publish_once(&format!("{queue}-other"), window, other)
            .await
            .expect("publish under another key"));

        let racing = format!("{queue}-race");
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..8 {
            let broker = broker.clone();
            let racing = racing.clone();
            let batch = vec![message(&queue, &format!("race-{i}"))];
            attempts.spawn(async move { broker.publish_once(&racing, window, batch).await });
        }
        let mut stored = 0;
        while let Some(attempt) = attempts.join_next().await {
            if attempt.expect("racing task").expect("racing publish once") {
                stored += 1;
            }
        }
        assert_eq!(
            stored, 1,
            "exactly one of the racing publishes stores its batch"
        );

        let short = format!("{queue}-short");
        let brief = Duration::from_millis(300);
        assert!(broker
            .publish_once(&short, brief, vec![message(&queue, "short-1")])
            .await
            .expect("publish with a short window"));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            broker
                .publish_once(&short, brief, vec![message(&queue, "short-2")])
                .await
                .expect("publish after the window"),
            "after its window a key publishes again"
        );

        let got = drain(&*broker, &queue, 6, 10).await;
        let (raced, mut rest): (Vec<String>, Vec<String>) =
            got.into_iter().partition(|id| id.starts_with("race-"));
        assert_eq!(raced.len(), 1, "one racing batch stored: {raced:?}");
        rest.sort();
        assert_eq!(rest, ["once-1", "once-2", "once-3", "short-1", "short-2"]);
        assert_nothing_to_fetch(&*broker, &queue, "after draining").await;
    }
}
