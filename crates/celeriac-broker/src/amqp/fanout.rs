//! Broadcasts over AMQP exchanges, as Celery does on RabbitMQ (PROTOCOL.md §5):
//! events on the `celeryev` topic exchange (durable), remote control on the
//! `celery.pidbox` fanout exchange (transient), so `celery inspect`, `celery events`
//! and Flower see celeriac workers, and celeriac's dashboard and control see Python
//! ones.
//!
//! - **Broadcast.** A message is published (confirmed, `delivery_mode` 1 unless the
//!   envelope says otherwise) to its exchange with its routing key. Celery's own
//!   exchanges (`celeryev`, `*.pidbox`) are declared first with Celery's settings,
//!   as kombu does when it publishes. Other exchanges are never made by a broadcast:
//!   when one does not exist nobody listens, and the message is dropped (a passive
//!   check, remembered per connection).
//! - **Subscribe.** Each subscription declares its exchange (as Celery declares the
//!   well-known ones; other names as transient, auto-deleted topic exchanges) and an
//!   exclusive, auto-deleted queue of its own, `<exchange>.<uuid>` (Celery's
//!   monitors use `celeryev.<uuid>`), bound with the binding key (`#` for "every
//!   message"; fanout exchanges ignore keys). It consumes without acks on a channel
//!   of its own. When the connection or channel breaks it subscribes again with
//!   backoff (100 ms doubling to 5 s); messages sent meanwhile are lost, as with
//!   kombu. Dropping the [`Subscription`] closes the channel, and RabbitMQ deletes the
//!   queue.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use tokio::sync::mpsc;

use super::wire::{self, Arrived};
use super::{confirm, exchange_settings, is_not_found, lapin_error, Inner};
use crate::{
    Broadcast, BroadcastMessage, BrokerError, SubscribeParams, Subscription, SUBSCRIPTION_BUFFER,
};

/// First resubscribe delay; doubled per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest resubscribe delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Event subscribers' queues drop messages older than this (Celery's
/// `event_queue_ttl`, 5 s).
const EVENT_QUEUE_TTL_MS: i32 = 5_000;

/// Celery's own exchanges: events and remote control.
fn is_well_known(exchange: &str) -> bool {
    exchange == "celeryev" || exchange.ends_with(".pidbox")
}

/// How a subscription declares its exchange: Celery's settings for the well-known
/// ones, a transient auto-deleted topic exchange for any other name.
fn subscription_exchange(name: &str) -> (ExchangeKind, bool, bool) {
    if is_well_known(name) {
        let (kind, durable) = exchange_settings(name, celeriac_core::routing::ExchangeKind::Topic);
        (kind, durable, false)
    } else {
        (ExchangeKind::Topic, false, true)
    }
}

/// Publishes a broadcast; drops it when its exchange does not exist.
pub(super) async fn broadcast(inner: &Arc<Inner>, message: Broadcast) -> Result<(), BrokerError> {
    let mut envelope = message.envelope;
    envelope.properties.delivery_mode.get_or_insert(1);
    let properties = wire::properties_of(&envelope, &[]);
    // One retry: a cached exchange may have been deleted since (auto-delete), which
    // RabbitMQ answers by closing the channel.
    for attempt in 0..2 {
        let session = inner.session().await?;
        let known = inner
            .state
            .lock()
            .live_exchanges
            .contains(&message.exchange);
        if !known && is_well_known(&message.exchange) {
            // Celery declares these when it publishes (kombu's maybe_declare).
            let (kind, durable, auto_delete) = subscription_exchange(&message.exchange);
            inner
                .ensure_exchange(&session, &message.exchange, kind, durable, auto_delete)
                .await?;
        } else if !known {
            let channel = session
                .connection
                .create_channel()
                .await
                .map_err(lapin_error)?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            match channel
                .exchange_declare(
                    message.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => {
                    let _ = channel.close(200, "OK".into()).await;
                    inner
                        .state
                        .lock()
                        .live_exchanges
                        .insert(message.exchange.clone());
                }
                Err(error) if is_not_found(&error) => return Ok(()),
                Err(error) => return Err(lapin_error(error)),
            }
        }
        let channel = session.publisher().await?;
        let published = async {
            confirm(
                channel
                    .basic_publish(
                        message.exchange.as_str().into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &envelope.body,
                        properties.clone(),
                    )
                    .await
                    .map_err(lapin_error)?,
            )
            .await
        };
        match published.await {
            Ok(()) => return Ok(()),
            Err(error) if attempt == 0 => {
                tracing::debug!(%error, exchange = %message.exchange, "broadcast failed; checking the exchange again");
                inner.state.lock().live_exchanges.remove(&message.exchange);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A subscription's channel and consumer.
struct Listener {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Listener {
    async fn open(inner: &Inner, params: &SubscribeParams) -> Result<Listener, BrokerError> {
        let session = inner.session().await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        let (kind, durable, auto_delete) = subscription_exchange(&params.exchange);
        let declare = ExchangeDeclareOptions {
            durable,
            auto_delete,
            ..ExchangeDeclareOptions::default()
        };
        if let Err(error) = channel
            .exchange_declare(
                params.exchange.as_str().into(),
                kind.clone(),
                declare,
                FieldTable::default(),
            )
            .await
        {
            if !session.is_open() {
                return Err(lapin_error(error));
            }
            tracing::warn!(exchange = %params.exchange, %error, "the exchange exists with other settings; using it as it is");
        }
        // A 406 above closed that channel; a fresh one either way.
        let channel = if channel.status().connected() {
            channel
        } else {
            session
                .connection
                .create_channel()
                .await
                .map_err(lapin_error)?
        };
        let queue = format!("{}.{}", params.exchange, uuid::Uuid::new_v4());
        let mut arguments = FieldTable::default();
        if params.exchange == "celeryev" {
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongInt(EVENT_QUEUE_TTL_MS),
            );
        }
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(lapin_error)?;
        let binding_key = match (&kind, params.routing_key.as_deref()) {
            (ExchangeKind::Fanout, _) => "",
            (ExchangeKind::Topic, None) => "#",
            (_, None) => "",
            (_, Some(key)) => key,
        };
        channel
            .queue_bind(
                queue.as_str().into(),
                params.exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lapin_error)?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(lapin_error)?;
        inner
            .state
            .lock()
            .live_exchanges
            .insert(params.exchange.clone());
        Ok(Listener { channel, consumer })
    }
}

/// Subscribes: listening has started when this returns.
pub(super) async fn subscribe(
    inner: Arc<Inner>,
    params: &SubscribeParams,
) -> Result<Subscription, BrokerError> {
    let listener = Listener::open(&inner, params).await?;
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
    tokio::spawn(listen(inner, params.clone(), listener, sender));
    Ok(Subscription::from_receiver(receiver))
}

/// Forwards received messages until the subscription is dropped, subscribing again
/// when the channel or connection breaks.
async fn listen(
    inner: Arc<Inner>,
    params: SubscribeParams,
    mut listener: Listener,
    sender: mpsc::Sender<BroadcastMessage>,
) {
    loop {
        let next = tokio::select! {
            _ = sender.closed() => break,
            next = listener.consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let arrived = Arrived::of(&delivery);
                match wire::envelope_of(&arrived) {
                    Ok(envelope) => {
                        let message = BroadcastMessage {
                            exchange: delivery.exchange.to_string(),
                            routing_key: delivery.routing_key.to_string(),
                            envelope,
                        };
                        if sender.send(message).await.is_err() {
                            break;
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(exchange = %params.exchange, %reason, "skipping a broadcast that is not a kombu message");
                    }
                }
            }
            Some(Err(_)) | None => {
                let mut backoff = MIN_BACKOFF;
                listener = loop {
                    tokio::select! {
                        _ = sender.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    match Listener::open(&inner, &params).await {
                        Ok(listener) => break listener,
                        Err(error) => {
                            tracing::warn!(%error, exchange = %params.exchange, ?backoff, "subscribing again failed; retrying");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                };
                tracing::info!(exchange = %params.exchange, "subscribed again after a broken connection");
            }
        }
    }
    if listener.channel.status().connected() {
        let _ = listener.channel.close(200, "OK".into()).await;
    }
}
