//! Broadcasts over Redis PUB/SUB, exactly as kombu's Redis transport does fanout
//! (PROTOCOL.md §2.7), so events and remote-control messages cross between Python
//! Celery and celeriac.
//!
//! - **Channel.** A message for exchange `E` with routing key `R` is `PUBLISH`ed on
//!   `<global_keyprefix>/<db>.E/R`, or `<global_keyprefix>/<db>.E` when `R` is empty
//!   (kombu's `keyprefix_fanout` `/{db}.` with `fanout_patterns=True`, both kombu
//!   defaults; the transport options that change them are not supported).
//! - **Payload.** kombu's JSON envelope (base64 body), with `delivery_info` naming the
//!   exchange and routing key, a fresh uuid4 `delivery_tag` and an explicit priority,
//!   as kombu's `basic_publish` writes it.
//! - **Subscribe.** `PSUBSCRIBE` on a connection of its own. kombu subscribes the
//!   binding key with `#` replaced by `*`; so do we, and since a Redis glob `*` also
//!   spans dots, each received message is then checked against the binding key with
//!   AMQP topic rules. No binding key subscribes both `E` and `E/*`. On receipt the
//!   prefix and `/<db>.` are removed; the text before the first `/` is the exchange,
//!   the rest the routing key.
//! - **Reconnect.** A subscription runs in a task of its own: when its connection
//!   breaks (or a `PING` every 15 s goes unanswered) it reconnects with backoff
//!   (100 ms doubling to 5 s) and subscribes again. Messages published meanwhile are
//!   lost, as with kombu: broadcasts are fire-and-forget. The task ends when the
//!   [`Subscription`] is dropped.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use celeriac_core::routing::topic_matches;
use celeriac_core::Envelope;
use celeriac_redis::connection::Timeouts;
use celeriac_redis::keys::{glob_escape, BrokerKeys};
use celeriac_redis::RedisTarget;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{client_error, redis_error, Inner};
use crate::{
    Broadcast, BroadcastMessage, BrokerError, SubscribeParams, Subscription, SUBSCRIPTION_BUFFER,
};

/// First reconnect delay; doubled per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle subscription connection is checked with `PING`.
const PING_EVERY: Duration = Duration::from_secs(15);

/// kombu's `keyprefix_fanout` for database `db`, after the global key prefix.
fn fanout_prefix(target: &RedisTarget) -> String {
    BrokerKeys::new(&target.global_keyprefix).fanout_prefix(target.db)
}

/// The channel a broadcast is published on (kombu's `_get_publish_topic`, with the
/// global key prefix that kombu's prefixed client adds to `PUBLISH`).
pub(crate) fn channel(target: &RedisTarget, exchange: &str, routing_key: &str) -> String {
    if routing_key.is_empty() {
        format!("{}{exchange}", fanout_prefix(target))
    } else {
        format!("{}{exchange}/{routing_key}", fanout_prefix(target))
    }
}

/// The `PSUBSCRIBE` patterns of a subscription.
pub(crate) fn patterns(target: &RedisTarget, params: &SubscribeParams) -> Vec<String> {
    let base = format!(
        "{}{}",
        glob_escape(&fanout_prefix(target)),
        glob_escape(&params.exchange)
    );
    match params.routing_key.as_deref() {
        None => vec![base.clone(), format!("{base}/*")],
        Some("") => vec![base],
        Some(key) => {
            let mut patterns = vec![format!("{base}/{}", kombu_glob(key))];
            // A Redis glob cannot say "zero or more words": `a.#` also matches `a`,
            // and `#` inside a key (`a.#.b`) also matches fewer dots. Subscribe a
            // wider pattern there; received messages are filtered exactly.
            let (head, rest) = match key.strip_suffix(".#") {
                Some(head) => (head, true),
                None => (key, false),
            };
            if head.contains('#') {
                patterns = vec![format!("{base}/*")];
            } else if rest {
                patterns.push(format!("{base}/{}", kombu_glob(head)));
            }
            if topic_matches(key, "") {
                patterns.push(base);
            }
            patterns
        }
    }
}

/// kombu's pattern for a binding key: `#` replaced by `*`, other glob characters
/// taken literally.
fn kombu_glob(key: &str) -> String {
    key.split('#')
        .map(|part| {
            part.split('*')
                .map(glob_escape)
                .collect::<Vec<_>>()
                .join("*")
        })
        .collect::<Vec<_>>()
        .join("*")
}

/// The exchange and routing key of a received channel, if it belongs to this
/// target's fanout prefix.
pub(crate) fn parse_channel(target: &RedisTarget, channel: &str) -> Option<(String, String)> {
    let rest = channel.strip_prefix(&fanout_prefix(target))?;
    Some(match rest.split_once('/') {
        Some((exchange, routing_key)) => (exchange.to_string(), routing_key.to_string()),
        None => (rest.to_string(), String::new()),
    })
}

/// `PUBLISH`es one broadcast on the broker's command connection. When the shared
/// connection turns out broken (Redis restarted while idle) it is replaced and the
/// `PUBLISH` sent once more: a subscriber may then, rarely, get the message twice
/// (the first reply was lost after Redis had sent it), never zero times because of
/// a stale connection.
pub(super) async fn broadcast(broker: &Inner, message: &Broadcast) -> Result<(), BrokerError> {
    let channel = channel(&broker.target, &message.exchange, &message.routing_key);
    let payload = message.to_kombu_json();
    let publish = || async {
        let mut conn: ConnectionManager = broker.conn();
        ::redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&payload)
            .query_async::<i64>(&mut conn)
            .await
    };
    match publish().await {
        Err(error) if error.is_unrecoverable_error() => {
            tracing::debug!(%error, "broadcast connection replaced; publishing once more");
            publish().await.map(drop).map_err(redis_error)
        }
        other => other.map(drop).map_err(redis_error),
    }
}

/// What a subscription listens to.
struct Listener {
    target: RedisTarget,
    params: SubscribeParams,
    patterns: Vec<String>,
    timeouts: Timeouts,
}

/// Subscribes (the first `PSUBSCRIBE` is confirmed before this returns) and starts the
/// task that serves the subscription.
pub(super) async fn subscribe(
    broker: &Inner,
    params: &SubscribeParams,
) -> Result<Subscription, BrokerError> {
    let listener = Listener {
        patterns: patterns(&broker.target, params),
        target: broker.target.clone(),
        params: params.clone(),
        timeouts: Timeouts {
            response: broker.options.response_timeout,
            connect: broker.options.connection_timeout,
        },
    };
    let pubsub = listener.connect().await?;
    let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
    tokio::spawn(listener.run(pubsub, tx));
    Ok(Subscription::from_receiver(rx))
}

/// Why a connection ended.
enum Ended {
    /// The subscription was dropped: stop.
    Closed,
    /// The connection broke: reconnect.
    Broken(String),
}

impl Listener {
    /// Opens a pub/sub connection and subscribes the patterns.
    async fn connect(&self) -> Result<::redis::aio::PubSub, BrokerError> {
        let client = self
            .target
            .client()
            .map_err(|e| client_error(e, &self.target.display))?;
        let timed_out = |what: &str| {
            BrokerError::Connection(
                format!("{what} did not finish within {:?}", self.timeouts.connect).into(),
            )
        };
        let mut pubsub = tokio::time::timeout(self.timeouts.connect, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting"))?
            .map_err(redis_error)?;
        tokio::time::timeout(
            self.timeouts.response,
            pubsub.psubscribe(self.patterns.as_slice()),
        )
        .await
        .map_err(|_| timed_out("PSUBSCRIBE"))?
        .map_err(redis_error)?;
        Ok(pubsub)
    }

    /// Serves connections until the subscription is dropped, reconnecting with backoff.
    async fn run(self, first: ::redis::aio::PubSub, tx: mpsc::Sender<BroadcastMessage>) {
        let mut pubsub = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let reason = match pubsub.take() {
                Some(connection) => match self.serve(connection, &tx).await {
                    Ended::Closed => return,
                    Ended::Broken(reason) => {
                        backoff = MIN_BACKOFF;
                        reason
                    }
                },
                None => {
                    let connected = tokio::select! {
                        connected = self.connect() => connected,
                        () = tx.closed() => return,
                    };
                    match connected {
                        Ok(connection) => {
                            tracing::info!(exchange = %self.params.exchange, "broadcast subscription resubscribed");
                            pubsub = Some(connection);
                            continue;
                        }
                        Err(error) => error.to_string(),
                    }
                }
            };
            tracing::warn!(exchange = %self.params.exchange, %reason, retry_in = ?backoff,
                "broadcast subscription connection lost; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Forwards the messages of one connection until it breaks or the subscription is
    /// dropped.
    async fn serve(
        &self,
        pubsub: ::redis::aio::PubSub,
        tx: &mpsc::Sender<BroadcastMessage>,
    ) -> Ended {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Broken("the server closed the connection".into());
                    };
                    let Some(received) = self.receive(&message) else { continue };
                    tokio::select! {
                        sent = tx.send(received) => if sent.is_err() { return Ended::Closed },
                        () = tx.closed() => return Ended::Closed,
                    }
                }
                () = tx.closed() => return Ended::Closed,
                _ = ping.tick() => {
                    match tokio::time::timeout(self.timeouts.response, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Ended::Broken(format!("PING failed: {error}")),
                        Err(_) => return Ended::Broken(format!("no PING reply within {:?}", self.timeouts.response)),
                    }
                }
            }
        }
    }

    /// The message of a pub/sub delivery, if it is one for this subscription.
    fn receive(&self, message: &::redis::Msg) -> Option<BroadcastMessage> {
        let channel = String::from_utf8_lossy(message.get_channel_name().as_bytes()).into_owned();
        let (exchange, routing_key) = parse_channel(&self.target, &channel)?;
        if exchange != self.params.exchange {
            return None;
        }
        if let Some(pattern) = &self.params.routing_key {
            if !topic_matches(pattern, &routing_key) {
                return None;
            }
        }
        match Envelope::from_kombu_json(message.get_payload_bytes()) {
            Ok(envelope) => Some(BroadcastMessage {
                exchange,
                routing_key,
                envelope,
            }),
            Err(error) => {
                // kombu logs and drops such events too.
                tracing::warn!(%channel, %error, "dropping a broadcast that is not a kombu envelope");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> RedisTarget {
        RedisTarget::parse(url).expect("a valid URL")
    }

    #[test]
    fn channels_are_kombus() {
        let t = target("redis://h/0");
        assert_eq!(
            channel(&t, "celeryev", "worker.online"),
            "/0.celeryev/worker.online"
        );
        assert_eq!(channel(&t, "celery.pidbox", ""), "/0.celery.pidbox");
        let t = target("redis://h/3?global_keyprefix=pfx");
        assert_eq!(
            channel(&t, "celeryev", "task.multi"),
            "pfx/3.celeryev/task.multi"
        );
        assert_eq!(
            parse_channel(&t, "pfx/3.celeryev/task.multi"),
            Some(("celeryev".into(), "task.multi".into()))
        );
        assert_eq!(
            parse_channel(&t, "pfx/3.celery.pidbox"),
            Some(("celery.pidbox".into(), String::new()))
        );
        assert_eq!(parse_channel(&t, "/3.celeryev/x"), None);
    }

    #[test]
    fn patterns_are_kombus_binding_keys() {
        let t = target("redis://h/0");
        let p = |key: Option<&str>| {
            patterns(
                &t,
                &SubscribeParams {
                    exchange: "celeryev".into(),
                    routing_key: key.map(str::to_string),
                },
            )
        };
        assert_eq!(
            p(Some("worker.#")),
            vec!["/0.celeryev/worker.*", "/0.celeryev/worker"]
        );
        assert_eq!(p(Some("task.*")), vec!["/0.celeryev/task.*"]);
        assert_eq!(p(Some("a.#.b")), vec!["/0.celeryev/*"]);
        assert_eq!(p(Some("")), vec!["/0.celeryev"]);
        assert_eq!(p(Some("#")), vec!["/0.celeryev/*", "/0.celeryev"]);
        assert_eq!(p(None), vec!["/0.celeryev", "/0.celeryev/*"]);
        assert_eq!(p(Some("a?[b]")), vec!["/0.celeryev/a\\?\\[b\\]"]);
    }

    #[test]
    fn payload_is_a_kombu_envelope_with_delivery_info() {
        let message = Broadcast {
            exchange: "celery.pidbox".into(),
            routing_key: String::new(),
            envelope: Envelope {
                headers: Default::default(),
                properties: Default::default(),
                content_type: "application/json".into(),
                content_encoding: "utf-8".into(),
                body: br#"{"method": "ping"}"#.to_vec(),
            },
        };
        let json: serde_json::Value =
            serde_json::from_slice(&message.to_kombu_json()).expect("JSON envelope");
        assert_eq!(json["body"], "eyJtZXRob2QiOiAicGluZyJ9");
        assert_eq!(
            json["properties"]["delivery_info"],
            serde_json::json!({"exchange": "celery.pidbox", "routing_key": ""})
        );
        assert_eq!(json["properties"]["body_encoding"], "base64");
        assert_eq!(json["properties"]["priority"], 0);
        assert!(json["properties"]["delivery_tag"].as_str().is_some());
    }
}
