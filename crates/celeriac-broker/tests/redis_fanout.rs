//! Broadcasts over Redis PUB/SUB beyond the conformance suite: kombu's channel names
//! and envelopes on the wire, and a subscription that survives its server restarting
//! (a private `redis-server`, never the shared one).

use std::time::Duration;

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_broker::redis::{RedisBroker, RedisBrokerOptions};
use celeriac_broker::{Broadcast, BroadcastMessage, Broker, SubscribeParams, Subscription};
use celeriac_core::Envelope;
use celeriac_redis::testing::{redis_url_or_skip, PrivateRedis};
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(20);

fn params(exchange: &str, routing_key: Option<&str>) -> SubscribeParams {
    SubscribeParams {
        exchange: exchange.into(),
        routing_key: routing_key.map(str::to_string),
    }
}

fn event(routing_key: &str, id: &str) -> Broadcast {
    Broadcast {
        exchange: "celeryev".into(),
        routing_key: routing_key.into(),
        envelope: Envelope {
            headers: Default::default(),
            properties: Default::default(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body: serde_json::to_vec(&serde_json::json!({"type": "worker-heartbeat", "id": id}))
                .expect("JSON"),
        },
    }
}

fn body(message: &BroadcastMessage) -> serde_json::Value {
    serde_json::from_slice(&message.envelope.body).expect("JSON body")
}

async fn next(subscription: &mut Subscription) -> BroadcastMessage {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("a broadcast within the patience")
        .expect("the subscription is alive")
}

/// The pidbox `ping` request as Python Celery publishes it (PROTOCOL.md §7.7, body
/// base64-encoded as on the wire) arrives decoded on `celery.pidbox`; and what we
/// broadcast is a kombu envelope on `<prefix>/0.celeryev/<routing key>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_channels_and_envelopes_on_the_wire() {
    let Some(url) = redis_url_or_skip("kombu_channels_and_envelopes_on_the_wire") else {
        return;
    };
    let harness = RedisHarness::new(&url);
    let broker = harness.redis_broker().await;
    let db = broker.target().db;
    let prefix = harness.prefix().to_string();
    let mut pidbox = broker
        .subscribe(&params("celery.pidbox", Some("")))
        .await
        .expect("subscribe");
    let raw_body = r#"{"method": "ping", "arguments": {}, "destination": null, "pattern": null, "matcher": null, "ticket": "a1eee5f5-f8b7-47c1-9797-6921f7aef9f9", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "a3637b71-7a12-3e44-ac09-cbdc19a1f972"}}"#;
    use base64::Engine as _;
    let envelope = serde_json::json!({
        "body": base64::engine::general_purpose::STANDARD.encode(raw_body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": 1795709013.4243605},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "ef02eba1-52d3-49df-aa43-2cd751af33bf"
        }
    });
    let mut conn = harness.connection().await;
    let receivers: i64 = ::redis::cmd("PUBLISH")
        .arg(format!("{prefix}/{db}.celery.pidbox"))
        .arg(envelope.to_string())
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(
        receivers, 1,
        "our subscription is the one pattern listening"
    );
    let got = next(&mut pidbox).await;
    assert_eq!(
        (got.exchange.as_str(), got.routing_key.as_str()),
        ("celery.pidbox", "")
    );
    assert_eq!(got.envelope.body, raw_body.as_bytes());
    assert_eq!(body(&got)["method"], "ping");
    assert_eq!(got.envelope.headers["clock"], 1);

    // Ours, seen by a raw PSUBSCRIBE as a kombu consumer would.
    let client = ::redis::Client::open(url.split('?').next().unwrap_or(&url)).expect("client");
    let mut raw = client.get_async_pubsub().await.expect("pubsub");
    raw.psubscribe(format!("{prefix}/{db}.celeryev/worker.*"))
        .await
        .expect("PSUBSCRIBE");
    broker
        .broadcast(event("worker.heartbeat", "hb-1"))
        .await
        .expect("broadcast");
    let message = tokio::time::timeout(PATIENCE, raw.on_message().next())
        .await
        .expect("a message")
        .expect("the stream is open");
    assert_eq!(
        message.get_channel_name(),
        format!("{prefix}/{db}.celeryev/worker.heartbeat")
    );
    let json: serde_json::Value =
        serde_json::from_slice(message.get_payload_bytes()).expect("JSON envelope");
    assert_eq!(json["properties"]["body_encoding"], "base64");
    assert_eq!(
        json["properties"]["delivery_info"],
        serde_json::json!({"exchange": "celeryev", "routing_key": "worker.heartbeat"})
    );
    let decoded = Envelope::from_kombu_json(message.get_payload_bytes()).expect("kombu envelope");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&decoded.body).expect("JSON body")["id"],
        "hb-1"
    );
}

/// A subscription resubscribes by itself after its connection is killed and after
/// the server restarts: broadcasts sent once it is back are received again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resubscribes_after_reconnect() {
    let test = "subscription_resubscribes_after_reconnect";
    let Some(mut server) = PrivateRedis::start_or_skip(test) else {
        return;
    };
    let options = RedisBrokerOptions::default();
    let broker = RedisBroker::open_url(&server.url(0), options)
        .await
        .expect("open the private Redis");
    let mut events = broker
        .subscribe(&params("celeryev", Some("worker.#")))
        .await
        .expect("subscribe");
    broker
        .broadcast(event("worker.online", "first"))
        .await
        .expect("broadcast");
    assert_eq!(body(&next(&mut events).await)["id"], "first");

    // 1. The pub/sub connection is killed (the server stays up).
    let mut admin = ::redis::Client::open(server.url(0))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(
        killed, 1,
        "our subscription's connection was the pub/sub client"
    );
    received_again(&broker, &mut events, "after CLIENT KILL").await;

    // 2. The server dies and comes back on the same port.
    server.restart().expect("restart the private Redis");
    received_again(&broker, &mut events, "after a restart").await;
}

/// Broadcasts numbered heartbeats until one arrives (those sent while the
/// subscription reconnects are lost, as with kombu); fails after [`PATIENCE`].
async fn received_again(broker: &RedisBroker, events: &mut Subscription, context: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for n in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{context}: nothing received within {PATIENCE:?}"
        );
        let id = format!("{context}-{n}");
        // The publish itself may fail while the server is down: retry.
        let _ = broker.broadcast(event("worker.heartbeat", &id)).await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            let got = body(&message)["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(got.starts_with(context), "{context}: unexpected {got}");
            return;
        }
    }
}

/// A broadcast right after Redis restarted under an idle broker handle succeeds at
/// the first call: the broken shared connection is replaced and the `PUBLISH` sent
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_after_a_restart_succeeds_at_once() {
    let test = "broadcast_after_a_restart_succeeds_at_once";
    let Some(mut server) = PrivateRedis::start_or_skip(test) else {
        return;
    };
    let broker = RedisBroker::open_url(&server.url(0), RedisBrokerOptions::default())
        .await
        .expect("open the private Redis");
    broker
        .broadcast(event("worker.online", "before"))
        .await
        .expect("broadcast");
    server.restart().expect("restart the private Redis");
    broker
        .broadcast(event("worker.heartbeat", "after"))
        .await
        .expect("the first broadcast after a restart succeeds");
}
