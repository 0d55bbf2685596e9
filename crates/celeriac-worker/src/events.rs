//! Celery events from the worker (PROTOCOL.md §5.1): the **event publisher** service.
//!
//! Worker events (`worker-online`, `worker-heartbeat` every `heartbeat_interval`,
//! `worker-offline`) are always sent, as Celery does unless started with
//! `--without-heartbeat --without-gossip`. Task events (`task-received`,
//! `task-started`, `task-succeeded`, ...) only while task events are on
//! (`worker_send_task_events`, `-E`, or the `enable_events` control command).
//!
//! Cheap by construction: with task events off, the executor's only cost is one
//! relaxed atomic load per event point (the event is not even built). With them on,
//! the executor builds the event's fields and hands them to a channel (bounded by
//! [`MAX_PENDING`]; when the broker cannot keep up, events are dropped, not
//! buffered without end); the publisher encodes them and sends whatever accumulated
//! within [`FLUSH_WINDOW`] as one `task.multi` message (up to [`MAX_BATCH`] events), so
//! the broker sees a few messages per burst rather than one per event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broadcast, BrokerError};
use celeriac_core::event::{event_envelope, EventKind, Origin, WorkerStatus, TASK_MULTI};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Most task events in one `task.multi` message.
pub const MAX_BATCH: usize = 256;

/// How long the publisher collects task events after the first of a burst before
/// it sends them (Celery flushes its buffer once per event-loop tick).
pub const FLUSH_WINDOW: Duration = Duration::from_millis(50);

/// Task events waiting for the publisher; beyond this (the broker is down or too
/// slow) new ones are dropped and counted, never buffered without bound.
pub const MAX_PENDING: usize = 10_000;

/// A task event with the clock and time of the moment it happened.
pub(crate) struct Pending {
    kind: EventKind,
    clock: u64,
    timestamp: f64,
}

/// The worker's event state: whether task events are on, the Lamport clock (shared
/// with remote-control replies), and the channel to the publisher.
pub(crate) struct Events {
    task_events: AtomicBool,
    clock: AtomicU64,
    origin: Origin,
    tx: mpsc::Sender<Pending>,
    dropped: AtomicU64,
}

impl Events {
    /// Events of node `hostname`; task events on when `task_events`.
    pub(crate) fn new(hostname: &str, task_events: bool) -> (Events, mpsc::Receiver<Pending>) {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        let events = Events {
            task_events: AtomicBool::new(task_events),
            clock: AtomicU64::new(0),
            origin: Origin {
                hostname: hostname.to_string(),
                utcoffset: celeriac_core::event::local_utcoffset(),
                pid: std::process::id(),
            },
            tx,
            dropped: AtomicU64::new(0),
        };
        (events, rx)
    }

    /// Whether task events are sent now.
    #[inline]
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether they were on.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// Sends the task event `make` builds, if task events are on (otherwise `make`
    /// is not called).
    #[inline]
    pub(crate) fn task(&self, make: impl FnOnce() -> EventKind) {
        if !self.task_events() {
            return;
        }
        let pending = Pending {
            kind: make(),
            clock: self.forward(),
            timestamp: celeriac_core::time::unix_now(),
        };
        // Full (the broker is not keeping up) or closed (the worker stopped): the
        // event is dropped, as Celery drops events it cannot send.
        if self.tx.try_send(pending).is_err()
            && self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
        {
            tracing::warn!(
                dropped = self.dropped.load(Ordering::Relaxed),
                "task events are dropped: the event publisher is not keeping up"
            );
        }
    }

    /// Advances the Lamport clock; returns the new value.
    pub(crate) fn forward(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past `other` (a received message's clock).
    pub(crate) fn adjust(&self, other: u64) -> u64 {
        self.clock.fetch_max(other, Ordering::Relaxed);
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The clock's value.
    pub(crate) fn clock(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }
}

/// 1, 5 and 15 minute load averages (zeros where the system does not say).
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<f64>().unwrap_or(0.0));
    let mut next = || (parts.next().unwrap_or(0.0) * 100.0).round() / 100.0;
    [next(), next(), next()]
}

/// Python's `platform.system()` for this OS.
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

fn status(shared: &Shared) -> WorkerStatus {
    let stats = shared.stats.snapshot();
    WorkerStatus {
        freq: shared.config.heartbeat_interval.as_secs_f64(),
        active: stats.active,
        processed: stats.processed,
        loadavg: loadavg(),
        sw_ident: "celeriac".into(),
        sw_ver: env!("CARGO_PKG_VERSION").into(),
        sw_sys: sw_sys().into(),
    }
}

/// The publisher: `worker-online`, then task events as they come and a heartbeat
/// every `heartbeat_interval`; on `stop`, the task events still queued and
/// `worker-offline`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Pending>,
    stop: CancellationToken,
) {
    let mut publisher = Publisher {
        shared: shared.clone(),
        exchange: shared.config.event_exchange.clone(),
        unsupported: false,
    };
    publisher
        .worker(EventKind::WorkerOnline(status(&shared)))
        .await;
    let every = shared
        .config
        .heartbeat_interval
        .max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            received = rx.recv() => match received {
                Some(pending) => {
                    batch.push(pending);
                    // Collect what comes within FLUSH_WINDOW: one message per burst.
                    let flush_at = tokio::time::Instant::now() + FLUSH_WINDOW;
                    while batch.len() < MAX_BATCH {
                        match tokio::time::timeout_at(flush_at, rx.recv()).await {
                            Ok(Some(pending)) => batch.push(pending),
                            _ => break,
                        }
                    }
                    publisher.tasks(&mut batch).await;
                }
                None => break,
            },
            _ = heartbeat.tick() => {
                publisher.worker(EventKind::WorkerHeartbeat(status(&shared))).await;
            }
        }
    }
    while let Ok(pending) = rx.try_recv() {
        batch.push(pending);
        if batch.len() >= MAX_BATCH {
            publisher.tasks(&mut batch).await;
        }
    }
    publisher.tasks(&mut batch).await;
    publisher
        .worker(EventKind::WorkerOffline(status(&shared)))
        .await;
}

struct Publisher {
    shared: Arc<Shared>,
    exchange: String,
    unsupported: bool,
}

impl Publisher {
    async fn worker(&mut self, kind: EventKind) {
        let clock = self.shared.events.forward();
        let body = kind.to_body(
            &self.shared.events.origin,
            clock,
            celeriac_core::time::unix_now(),
        );
        self.send(kind.routing_key(), &body).await;
    }

    /// Sends (and empties) `batch`: one event with its own routing key, several as
    /// one `task.multi` message.
    async fn tasks(&mut self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let origin = &self.shared.events.origin;
        let (routing_key, body) = if batch.len() == 1 {
            let p = &batch[0];
            (
                p.kind.routing_key(),
                p.kind.to_body(origin, p.clock, p.timestamp),
            )
        } else {
            let bodies = batch
                .iter()
                .map(|p| p.kind.to_body(origin, p.clock, p.timestamp))
                .collect();
            (TASK_MULTI.to_string(), Value::Array(bodies))
        };
        batch.clear();
        self.send(routing_key, &body).await;
    }

    async fn send(&mut self, routing_key: String, body: &Value) {
        if self.unsupported {
            return;
        }
        let message = Broadcast {
            exchange: self.exchange.clone(),
            routing_key,
            envelope: event_envelope(&self.shared.events.origin.hostname, body),
        };
        match self.shared.broker.broadcast(message).await {
            Ok(()) => {}
            Err(BrokerError::Unsupported { .. }) => {
                tracing::info!(broker = %self.shared.broker.describe(), "the broker has no broadcasts; events are off");
                self.unsupported = true;
            }
            Err(error) => tracing::warn!(%error, "sending an event failed; dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_are_built_only_when_on() {
        let (events, mut rx) = Events::new("w@h", false);
        events.task(|| panic!("built while off"));
        assert!(rx.try_recv().is_err());
        assert!(!events.set_task_events(true));
        events.task(|| EventKind::TaskStarted { uuid: "a".into() });
        let pending = rx.try_recv().expect("sent");
        assert_eq!(pending.kind.type_name(), "task-started");
        assert_eq!(pending.clock, 1);
    }

    #[test]
    fn a_full_channel_drops_events_instead_of_growing() {
        let (events, mut rx) = Events::new("w@h", true);
        for i in 0..MAX_PENDING + 5 {
            events.task(|| EventKind::TaskStarted {
                uuid: i.to_string(),
            });
        }
        assert_eq!(events.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(rx.try_recv().map(|p| p.clock).ok(), Some(1));
    }

    #[test]
    fn the_clock_moves_past_received_clocks() {
        let (events, _rx) = Events::new("w@h", false);
        assert_eq!(events.forward(), 1);
        assert!(events.adjust(10) > 10);
        let now = events.clock();
        assert!(events.adjust(3) > now);
    }
}
