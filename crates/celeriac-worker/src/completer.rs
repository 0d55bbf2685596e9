//! Batched results and acks.
//!
//! Running tasks hand their completions to one completer task through a channel. The
//! completer takes everything that is waiting (up to a batch), stores the results in
//! one backend call and then acks in one broker call, so a late ack always follows its
//! result. A failed write is retried with backoff instead of being dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use celeriac_backend::ResultBackend;
use celeriac_broker::{Broker, DeliveryTag};
use celeriac_core::TaskMeta;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest batch of results or acks written at once.
const BATCH: usize = 512;

/// One thing to write.
#[derive(Debug)]
pub enum Completion {
    /// Store a result.
    Store(Box<TaskMeta>),
    /// Acknowledge a delivery (after any result queued before it).
    Ack(DeliveryTag),
}

/// The sending side, held by running tasks.
pub type CompletionSender = mpsc::UnboundedSender<Completion>;

/// Runs the completer until `stop` is cancelled and the channel is drained.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Completion>,
    broker: Arc<dyn Broker>,
    backend: Option<Arc<dyn ResultBackend>>,
    held: Arc<Mutex<HashSet<DeliveryTag>>>,
    result_expires: Option<Duration>,
    stop: CancellationToken,
) {
    let mut metas = Vec::with_capacity(BATCH);
    let mut tags = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else {
            // Stopping: drain what is left, then end.
            while let Ok(item) = rx.try_recv() {
                push(item, &mut metas, &mut tags);
            }
            flush(
                &broker,
                &backend,
                &held,
                result_expires,
                &mut metas,
                &mut tags,
            )
            .await;
            return;
        };
        push(first, &mut metas, &mut tags);
        while metas.len() + tags.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => push(item, &mut metas, &mut tags),
                Err(_) => break,
            }
        }
        flush(
            &broker,
            &backend,
            &held,
            result_expires,
            &mut metas,
            &mut tags,
        )
        .await;
    }
}

fn push(item: Completion, metas: &mut Vec<TaskMeta>, tags: &mut Vec<DeliveryTag>) {
    match item {
        Completion::Store(meta) => metas.push(*meta),
        Completion::Ack(tag) => tags.push(tag),
    }
}

async fn flush(
    broker: &Arc<dyn Broker>,
    backend: &Option<Arc<dyn ResultBackend>>,
    held: &Mutex<HashSet<DeliveryTag>>,
    result_expires: Option<Duration>,
    metas: &mut Vec<TaskMeta>,
    tags: &mut Vec<DeliveryTag>,
) {
    if let (Some(backend), false) = (backend, metas.is_empty()) {
        let stored = with_retries("storing results", || {
            backend.store_many(metas, result_expires)
        })
        .await;
        if let Err(error) = stored {
            tracing::error!(%error, count = metas.len(), "giving up storing results");
        }
    }
    metas.clear();
    if !tags.is_empty() {
        if let Err(error) = with_retries("acking", || broker.ack(tags)).await {
            // The messages stay leased until their lease lapses and are then
            // redelivered: a duplicate, never a loss.
            tracing::error!(%error, count = tags.len(), "giving up acking; messages will be redelivered");
        }
        let mut held = held.lock();
        for tag in tags.iter() {
            held.remove(tag);
        }
    }
    tags.clear();
}

/// Runs `operation` up to ten times with exponential backoff (20 ms doubling to 2 s),
/// logging each failure; returns the last error if every attempt failed.
pub(crate) async fn with_retries<T, E, F, Fut>(what: &str, mut operation: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    const ATTEMPTS: u32 = 10;
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, attempt, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
