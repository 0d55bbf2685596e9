//! The RabbitMQ broker across connection loss: connections are closed from the
//! server side with `rabbitmqctl close_connection` (found by their unique
//! connection name), never by stopping the shared node.
//!
//! - unacknowledged deliveries come back (RabbitMQ redelivers them) and acks on the
//!   old connection's tags do nothing;
//! - publishes during a close all return `Ok` and every one of them is stored;
//! - a subscription subscribes again by itself.
//!
//! Skipped, with the reason printed, when RabbitMQ does not answer or `rabbitmqctl`
//! cannot be run (failed instead with `CELERIAC_REQUIRE_SERVICES=1`).

#![cfg(feature = "amqp")]
#![allow(clippy::field_reassign_with_default)] // AmqpBrokerOptions is non-exhaustive

use std::collections::HashSet;
use std::time::Duration;

use celeriac_broker::amqp::testing::{
    amqp_url_or_skip, close_connections_named, services_required,
};
use celeriac_broker::amqp::{AmqpBroker, AmqpBrokerOptions};
use celeriac_broker::{Broadcast, Broker, FetchParams, Publish, SubscribeParams};
use celeriac_core::TaskMessage;
use tokio::time::Instant;

fn message(queue: &str, id: &str) -> Publish {
    Publish {
        queue: queue.to_string(),
        envelope: TaskMessage::new("tasks.reconnect", id, vec![], Default::default()).encode(),
        not_before: None,
    }
}

fn params(queue: &str, max: usize) -> FetchParams {
    FetchParams {
        queues: vec![queue.to_string()],
        max,
        wait: Duration::from_millis(500),
        consumer: "amqp-reconnect".into(),
        lease: Duration::from_secs(30),
    }
}

/// A broker with a connection name of its own, or `None` when the test is skipped.
async fn setup(test: &str) -> Option<(AmqpBroker, String)> {
    let url = amqp_url_or_skip(test)?;
    if let Err(reason) = close_connections_named("celeriac-probe-no-such-connection") {
        assert!(
            !services_required(),
            "{test}: rabbitmqctl cannot be used ({reason}) and CELERIAC_REQUIRE_SERVICES=1"
        );
        eprintln!("skipped {test}: rabbitmqctl cannot be used: {reason}");
        return None;
    }
    let name = format!("celeriac-reconnect-{}", uuid::Uuid::new_v4().simple());
    let mut options = AmqpBrokerOptions::default();
    options.connection_name = name.clone();
    options.queue_expires = Some(Duration::from_secs(60));
    let broker = AmqpBroker::open_url(&url, options)
        .await
        .expect("open the broker");
    Some((broker, name))
}

/// Closes the broker's connection from the server side.
fn cut(name: &str) {
    let closed = close_connections_named(name).expect("rabbitmqctl close_connection");
    assert_eq!(closed, 1, "expected to close one connection named {name}");
}

fn ids(deliveries: &[celeriac_broker::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.envelope.task_id_hint().unwrap_or_default().to_string())
        .collect()
}

/// Fetches and acks until `count` distinct ids were seen; retries errors, as the
/// worker's fetch loop does.
async fn drain(broker: &AmqpBroker, queue: &str, count: usize) -> HashSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashSet::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages came back",
            seen.len()
        );
        match broker.fetch(&params(queue, 50)).await {
            Ok(got) => {
                seen.extend(ids(&got));
                let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
                broker.ack(&tags).await.expect("ack");
            }
            Err(error) => {
                eprintln!("fetch failed (retrying): {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    seen
}

/// Empties a test queue (declared with `x-expires`, RabbitMQ deletes it a minute
/// after its last use).
async fn delete_queue(broker: &AmqpBroker, queue: &str) {
    broker.purge(queue).await.expect("purge");
}

#[test]
fn unacked_deliveries_come_back_after_a_closed_connection() {
    celeriac_broker::testing::run("unacked_deliveries_come_back", async {
        let Some((broker, name)) = setup("unacked_deliveries_come_back").await else {
            return;
        };
        let queue = format!("reconnect.unacked.{}", uuid::Uuid::new_v4().simple());
        let sent: Vec<String> = (0..10).map(|i| format!("m-{i}")).collect();
        broker
            .publish(sent.iter().map(|id| message(&queue, id)).collect())
            .await
            .expect("publish");
        let mut held = Vec::new();
        while held.len() < 5 {
            held.extend(
                broker
                    .fetch(&params(&queue, 5 - held.len()))
                    .await
                    .expect("fetch"),
            );
        }
        assert!(held.iter().all(|d| d.delivery_count == 1));

        cut(&name);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The old connection's tags are stale: acking them loses nothing.
        let stale: Vec<_> = held.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&stale).await.expect("ack with stale tags");

        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut redelivered = 0;
        while seen.len() < sent.len() {
            assert!(Instant::now() < deadline, "got back only {seen:?}");
            match broker.fetch(&params(&queue, 20)).await {
                Ok(got) => {
                    redelivered += got.iter().filter(|d| d.delivery_count == 2).count();
                    seen.extend(ids(&got));
                    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
                    broker.ack(&tags).await.expect("ack");
                }
                Err(error) => {
                    eprintln!("fetch failed (retrying): {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        seen.sort();
        assert_eq!(seen, sent, "every message exactly once after the reconnect");
        assert_eq!(
            redelivered, 5,
            "the held messages came back as redeliveries"
        );
        delete_queue(&broker, &queue).await;
    });
}

#[test]
fn publishes_during_a_closed_connection_are_all_stored() {
    celeriac_broker::testing::run("publishes_during_a_closed_connection", async {
        let Some((broker, name)) = setup("publishes_during_a_closed_connection").await else {
            return;
        };
        let queue = format!("reconnect.publish.{}", uuid::Uuid::new_v4().simple());
        let publisher = broker.clone();
        let target = queue.clone();
        let sending = tokio::spawn(async move {
            let mut confirmed = Vec::new();
            for i in 0..300 {
                let id = format!("p-{i:03}");
                publisher
                    .publish(vec![message(&target, &id)])
                    .await
                    .expect("a publish during a reconnect still succeeds");
                confirmed.push(id);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            confirmed
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        cut(&name);
        let confirmed = sending.await.expect("the publishing task");
        let seen = drain(&broker, &queue, confirmed.len()).await;
        let missing: Vec<_> = confirmed.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
        delete_queue(&broker, &queue).await;
    });
}

#[test]
fn subscriptions_subscribe_again_after_a_closed_connection() {
    celeriac_broker::testing::run("subscriptions_subscribe_again", async {
        let Some((broker, name)) = setup("subscriptions_subscribe_again").await else {
            return;
        };
        let exchange = format!("reconnect.events.{}", uuid::Uuid::new_v4().simple());
        let mut subscription = broker
            .subscribe(&SubscribeParams {
                exchange: exchange.clone(),
                routing_key: Some("worker.#".into()),
            })
            .await
            .expect("subscribe");
        let envelope = TaskMessage::new("event", "e", vec![], Default::default()).encode();
        let event = |id: &str| {
            let mut envelope = envelope.clone();
            envelope.headers.insert("event_id".into(), id.into());
            Broadcast {
                exchange: exchange.clone(),
                routing_key: "worker.heartbeat".into(),
                envelope,
            }
        };
        broker.broadcast(event("before")).await.expect("broadcast");
        let first = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
            .await
            .expect("a broadcast before the cut")
            .expect("the subscription is alive");
        assert_eq!(first.envelope.headers["event_id"], "before");

        cut(&name);
        // Broadcasts are fire-and-forget: keep sending until the subscription is
        // back.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "the subscription never came back"
            );
            if let Err(error) = broker.broadcast(event("after")).await {
                eprintln!("broadcast failed (retrying): {error}");
            }
            match tokio::time::timeout(Duration::from_millis(300), subscription.recv()).await {
                Ok(Some(message)) => {
                    assert_eq!(message.envelope.headers["event_id"], "after");
                    break;
                }
                Ok(None) => panic!("the subscription ended"),
                Err(_) => {}
            }
        }
    });
}
