//! One pub/sub connection per backend handle, shared by all of its waiters.
//!
//! Waiters register a channel (the task's meta key) and receive [`Event`]s. A driver
//! task owns the connection and reconciles the channels the server has subscribed
//! with the channels that have waiters: it batches SUBSCRIBE / UNSUBSCRIBE, and tells
//! each new waiter once its channel is subscribed ([`Event::Subscribed`]) so the
//! waiter reads the key again and cannot miss a write made before the subscription
//! took effect. When the connection drops, the driver reconnects with backoff,
//! subscribes every channel again and sends `Subscribed` to every waiter (a result
//! published while disconnected is then found by that read).
//!
//! The driver starts with the first waiter and ends when the [`Subscriber`] is
//! dropped (its command channel closes). If it is gone anyway (its runtime shut
//! down), the next waiter starts a new one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::TaskMeta;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// First reconnect delay; doubled per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the subscription connection is checked with PING.
#[cfg(not(test))]
const PING_EVERY: Duration = Duration::from_secs(15);
/// Unit tests check the PING path quickly.
#[cfg(test)]
const PING_EVERY: Duration = Duration::from_millis(200);
/// How long connecting, PING and (UN)SUBSCRIBE may take before the connection is
/// considered broken.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a waiter learns.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A meta in a ready state was published on the channel (or stored through this
    /// handle).
    Ready(Arc<TaskMeta>),
    /// The channel is subscribed (first time, or again after a reconnect): anything
    /// written from now on is delivered, so read the key once more.
    Subscribed,
}

/// The shared subscription connection of one backend handle.
pub(crate) struct Subscriber {
    client: redis::Client,
    shared: Arc<Mutex<State>>,
    /// Wakes the driver; `None` until the first waiter, closed when it ended.
    driver: Mutex<Option<mpsc::UnboundedSender<()>>>,
}

#[derive(Default)]
struct State {
    /// Channel → waiter id → sender.
    channels: HashMap<String, HashMap<u64, mpsc::UnboundedSender<Event>>>,
    /// Waiters not yet told that their channel is subscribed.
    unconfirmed: Vec<(String, u64)>,
    next_id: u64,
    /// Connections opened so far.
    connections: u64,
}

/// A registered waiter; unregisters on drop.
pub(crate) struct Registration {
    channel: String,
    id: u64,
    shared: Arc<Mutex<State>>,
    driver: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Registration {
    /// The next event; `None` if the subscriber was dropped.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let empty = match state.channels.get_mut(&self.channel) {
            Some(waiters) => {
                waiters.remove(&self.id);
                waiters.is_empty()
            }
            None => false,
        };
        if empty {
            state.channels.remove(&self.channel);
            drop(state);
            // The driver unsubscribes channels without waiters.
            let _ = self.driver.send(());
        }
    }
}

impl Subscriber {
    /// A subscriber connecting with `client` (nothing is opened yet).
    pub(crate) fn new(client: redis::Client) -> Subscriber {
        Subscriber {
            client,
            shared: Arc::new(Mutex::new(State::default())),
            driver: Mutex::new(None),
        }
    }

    /// Registers a waiter on `channel`. Must be called within a tokio runtime (it
    /// starts the driver if needed).
    pub(crate) fn register(&self, channel: &str) -> Registration {
        let driver = self.driver();
        let (tx, events) = mpsc::unbounded_channel();
        let id = {
            let mut state = self.shared.lock();
            state.next_id += 1;
            let id = state.next_id;
            state
                .channels
                .entry(channel.to_string())
                .or_default()
                .insert(id, tx);
            state.unconfirmed.push((channel.to_string(), id));
            id
        };
        let _ = driver.send(());
        Registration {
            channel: channel.to_string(),
            id,
            shared: Arc::clone(&self.shared),
            driver,
            events,
        }
    }

    /// Delivers a ready meta to the waiters of `channel` in this process (used after
    /// a store through this handle, without waiting for the published message).
    pub(crate) fn notify(&self, channel: &str, meta: &TaskMeta) {
        let state = self.shared.lock();
        if let Some(waiters) = state.channels.get(channel) {
            let meta = Arc::new(meta.clone());
            for tx in waiters.values() {
                let _ = tx.send(Event::Ready(Arc::clone(&meta)));
            }
        }
    }

    /// How many channels have waiters (for tests).
    #[cfg(test)]
    pub(crate) fn channel_count(&self) -> usize {
        self.shared.lock().channels.len()
    }

    /// How many pub/sub connections were opened (for tests).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// The driver's command sender, starting a driver if none is running.
    fn driver(&self) -> mpsc::UnboundedSender<()> {
        let mut driver = self.driver.lock();
        if let Some(tx) = driver.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        {
            // A new driver starts without subscriptions: every waiter needs a new
            // confirmation.
            let mut state = self.shared.lock();
            let all = unconfirm_all(&state);
            state.unconfirmed = all;
        }
        tokio::spawn(drive(self.client.clone(), Arc::clone(&self.shared), rx));
        *driver = Some(tx.clone());
        tx
    }
}

/// Every registered waiter, as unconfirmed entries.
fn unconfirm_all(state: &State) -> Vec<(String, u64)> {
    state
        .channels
        .iter()
        .flat_map(|(channel, waiters)| waiters.keys().map(move |id| (channel.clone(), *id)))
        .collect()
}

/// Why a connection ended.
enum Ended {
    /// The subscriber was dropped: stop.
    Closed,
    /// The connection broke: reconnect.
    Broken(String),
}

/// Connects, serves, and reconnects until the command channel closes.
async fn drive(
    client: redis::Client,
    shared: Arc<Mutex<State>>,
    mut commands: mpsc::UnboundedReceiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            connected = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub()) => connected,
            closed = wait_closed(&mut commands) => {
                let () = closed;
                return;
            }
        };
        let reason = match connected {
            Ok(Ok(pubsub)) => {
                shared.lock().connections += 1;
                match serve(pubsub, &shared, &mut commands).await {
                    Ended::Closed => return,
                    Ended::Broken(reason) => {
                        backoff = MIN_BACKOFF;
                        reason
                    }
                }
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no connection within {IO_TIMEOUT:?}"),
        };
        tracing::warn!(%reason, retry_in = ?backoff, "result backend pub/sub connection lost; reconnecting");
        {
            let mut state = shared.lock();
            let all = unconfirm_all(&state);
            state.unconfirmed = all;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = wait_closed(&mut commands) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Completes when the command channel is closed (commands are dropped: nothing is
/// subscribed while disconnected; the reconcile after connecting covers them).
async fn wait_closed(commands: &mut mpsc::UnboundedReceiver<()>) {
    while commands.recv().await.is_some() {}
}

/// Serves one connection until it breaks or the subscriber is dropped.
async fn serve(
    pubsub: redis::aio::PubSub,
    shared: &Arc<Mutex<State>>,
    commands: &mut mpsc::UnboundedReceiver<()>,
) -> Ended {
    let (mut sink, mut stream) = pubsub.split();
    let mut subscribed: HashSet<String> = HashSet::new();
    if let Err(reason) = reconcile(&mut sink, shared, &mut subscribed).await {
        return Ended::Broken(reason);
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            command = commands.recv() => {
                if command.is_none() {
                    return Ended::Closed;
                }
                // Coalesce a burst of registrations into one reconcile.
                while let Ok(()) = commands.try_recv() {}
                if let Err(reason) = reconcile(&mut sink, shared, &mut subscribed).await {
                    return Ended::Broken(reason);
                }
            }
            message = stream.next() => match message {
                Some(message) => dispatch(shared, &message),
                None => return Ended::Broken("the server closed the connection".into()),
            },
            _ = ping.tick() => {
                // In subscribed mode RESP2 answers PING with ["pong", ""]: any reply will do.
                match tokio::time::timeout(IO_TIMEOUT, sink.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Ended::Broken(format!("PING failed: {error}")),
                    Err(_) => return Ended::Broken(format!("no PING reply within {IO_TIMEOUT:?}")),
                }
            }
        }
    }
}

/// Subscribes channels that have waiters, unsubscribes channels that have none, and
/// confirms waiters whose channel is subscribed.
async fn reconcile(
    sink: &mut redis::aio::PubSubSink,
    shared: &Arc<Mutex<State>>,
    subscribed: &mut HashSet<String>,
) -> Result<(), String> {
    let (add, remove): (Vec<String>, Vec<String>) = {
        let state = shared.lock();
        (
            state
                .channels
                .keys()
                .filter(|c| !subscribed.contains(*c))
                .cloned()
                .collect(),
            subscribed
                .iter()
                .filter(|c| !state.channels.contains_key(*c))
                .cloned()
                .collect(),
        )
    };
    if !remove.is_empty() {
        with_timeout("UNSUBSCRIBE", sink.unsubscribe(&remove)).await?;
        for channel in &remove {
            subscribed.remove(channel);
        }
    }
    if !add.is_empty() {
        with_timeout("SUBSCRIBE", sink.subscribe(&add)).await?;
        subscribed.extend(add);
    }
    let mut state = shared.lock();
    let pending = std::mem::take(&mut state.unconfirmed);
    let mut still = Vec::new();
    for (channel, id) in pending {
        let Some(tx) = state.channels.get(&channel).and_then(|w| w.get(&id)) else {
            continue; // unregistered meanwhile
        };
        if subscribed.contains(&channel) {
            let _ = tx.send(Event::Subscribed);
        } else {
            // Registered after the snapshot above: the next command reconciles it.
            still.push((channel, id));
        }
    }
    state.unconfirmed.extend(still);
    Ok(())
}

async fn with_timeout(
    what: &str,
    future: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(IO_TIMEOUT, future).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{what} failed: {error}")),
        Err(_) => Err(format!("no {what} reply within {IO_TIMEOUT:?}")),
    }
}

/// Hands a published meta to the waiters of its channel if it is in a ready state.
fn dispatch(shared: &Arc<Mutex<State>>, message: &redis::Msg) {
    let channel = message.get_channel_name();
    if !shared.lock().channels.contains_key(channel) {
        return;
    }
    let meta = match super::decode_meta(channel, message.get_payload_bytes()) {
        Ok(meta) if meta.status.is_ready() => Arc::new(meta),
        Ok(_) => return,
        Err(error) => {
            // The waiter reads the key on its next check and reports it there.
            tracing::debug!(%error, channel, "unreadable result published");
            return;
        }
    };
    let state = shared.lock();
    if let Some(waiters) = state.channels.get(channel) {
        for tx in waiters.values() {
            let _ = tx.send(Event::Ready(Arc::clone(&meta)));
        }
    }
}
