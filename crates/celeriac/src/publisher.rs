//! Deferred publish confirms ([`PublishConfirms::Deferred`]): a send hands its
//! prepared message to the app's background publisher and returns at once; the
//! publisher takes everything waiting (up to [`BATCH_CAP`] sends) and stores it with
//! one [`Broker::publish`], so N sequential sends cost about N / batch round trips
//! instead of N.
//!
//! Nothing is lost silently:
//! - the buffer is bounded (`task_publish_buffer`): a send to a full buffer waits
//!   for room, nothing is dropped;
//! - the broker's own retry applies to every batch; a batch that finally fails is
//!   logged at error level with its task ids and reported by the next `send_*` call
//!   and by [`App::flush`](crate::App::flush) (the first failure since the last
//!   flush, naming every task that failed since);
//! - when the app's last handle is dropped the publisher stores what is buffered and
//!   stops; on a multi-threaded tokio runtime the drop waits for that (up to
//!   [`DROP_WAIT`]). A runtime that ends first cancels the publisher: the sends it
//!   still held are logged at error level. Call `flush` before the runtime ends.
//!
//! Order: deferred sends are published in the order their calls returned. A send
//! that takes the confirmed path (unique sends, `publish_once`, `send_batch`,
//! workflows) first waits for the deferred sends handed over before it
//! ([`Publisher::barrier`]), so it never overtakes them; with nothing buffered
//! that wait costs nothing.
//!
//! [`PublishConfirms::Deferred`]: celeriac_core::config::PublishConfirms::Deferred

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use celeriac_broker::{Broadcast, Broker, BrokerError, Publish};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// Most sends stored by one [`Broker::publish`] of the publisher.
pub const BATCH_CAP: usize = 1000;

/// How long dropping an app's last handle waits for its publisher to store what is
/// buffered (multi-threaded runtimes only).
pub const DROP_WAIT: Duration = Duration::from_secs(10);

/// One send handed over, or a flush marker.
enum Item {
    Send {
        id: String,
        publishes: Vec<Publish>,
        events: Vec<Broadcast>,
    },
    Flush(oneshot::Sender<()>),
}

/// A batch that was not stored.
#[derive(Clone)]
struct Failure {
    task_ids: Vec<String>,
    error: Arc<BrokerError>,
}

impl Failure {
    fn to_error(&self) -> Error {
        Error::PublishFailed {
            task_ids: self.task_ids.clone(),
            source: self.error.clone(),
        }
    }
}

#[derive(Default)]
struct Failures {
    /// The first failure not yet returned by a send (with the ids of every task
    /// that failed since).
    unreported: Option<Failure>,
    /// The first failure since the last flush (with the ids of every task that
    /// failed since).
    since_flush: Option<Failure>,
}

/// State shared by the app's handle and its publisher task.
#[derive(Default)]
struct Shared {
    failures: Mutex<Failures>,
    /// Sends handed over and not yet published (or failed).
    pending: AtomicUsize,
    /// Set when the publisher task ends (finished or cancelled).
    finished: Mutex<bool>,
    finished_changed: Condvar,
}

impl Shared {
    fn record(&self, failure: Failure) {
        let mut guard = self.failures();
        let failures = &mut *guard;
        // The first error, with the ids of every task not published since.
        for slot in [&mut failures.unreported, &mut failures.since_flush] {
            match slot {
                Some(first) => first.task_ids.extend(failure.task_ids.iter().cloned()),
                None => *slot = Some(failure.clone()),
            }
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks the publisher finished when its task ends, however it ends; a task
/// cancelled with sends still buffered logs them.
struct FinishGuard(Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let lost = self.0.pending.load(Ordering::SeqCst);
        if lost > 0 {
            tracing::error!(
                count = lost,
                "the deferred publisher was stopped (its runtime ended) with sends not yet published; they are lost (call App::flush before the runtime ends)"
            );
        }
        let mut finished = self
            .0
            .finished
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *finished = true;
        self.0.finished_changed.notify_all();
    }
}

/// The app's handle on its background publisher.
pub(crate) struct Publisher {
    sender: Option<mpsc::Sender<Item>>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Starts the publisher task on the current tokio runtime, with room for
    /// `buffer` sends waiting.
    pub(crate) fn start(broker: Arc<dyn Broker>, buffer: usize) -> Publisher {
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(broker, receiver, shared.clone()));
        Publisher {
            sender: Some(sender),
            shared,
        }
    }

    /// The first failure not yet returned by a send, taken.
    pub(crate) fn take_unreported(&self) -> Option<Error> {
        self.shared
            .failures()
            .unreported
            .take()
            .map(|f| f.to_error())
    }

    /// Sends handed over and not yet confirmed or failed.
    pub(crate) fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Hands one send over; waits while the buffer is full.
    pub(crate) async fn hand_over(
        &self,
        id: String,
        publishes: Vec<Publish>,
        events: Vec<Broadcast>,
    ) -> Result<(), Error> {
        let Some(sender) = &self.sender else {
            return Err(stopped(vec![id]));
        };
        // Room first (a caller that gives up while waiting leaves no trace), then
        // count and send without waiting.
        let Ok(permit) = sender.reserve().await else {
            return Err(stopped(vec![id]));
        };
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        permit.send(Item::Send {
            id,
            publishes,
            events,
        });
        Ok(())
    }

    /// Waits until every send handed over before this call is published or failed;
    /// returns the first failure since the last flush.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let reached = self.wait_for_handed_over().await;
        let mut failures = self.shared.failures();
        let failure = failures.since_flush.take();
        failures.unreported = None;
        drop(failures);
        if let Some(failure) = failure {
            return Err(failure.to_error());
        }
        if !reached && self.pending() > 0 {
            return Err(stopped(Vec::new()));
        }
        Ok(())
    }

    /// Waits until every send handed over before this call is published or failed,
    /// so that a confirmed send made next cannot overtake them. Failures stay where
    /// they are, for the next send and the next [`Publisher::flush`]; an error only
    /// when the publisher stopped with sends still pending.
    pub(crate) async fn barrier(&self) -> Result<(), Error> {
        if self.pending() == 0 || self.wait_for_handed_over().await || self.pending() == 0 {
            return Ok(());
        }
        Err(stopped(Vec::new()))
    }

    /// Sends a flush marker behind everything handed over and waits for the
    /// publisher to answer it; `false` when the publisher is gone.
    async fn wait_for_handed_over(&self) -> bool {
        let (reply, done) = oneshot::channel();
        let reached = match &self.sender {
            Some(sender) => sender.send(Item::Flush(reply)).await.is_ok(),
            None => false,
        };
        reached && done.await.is_ok()
    }
}

impl Drop for Publisher {
    /// Closes the buffer: the publisher stores what is in it and stops. On a
    /// multi-threaded runtime, waits for that up to [`DROP_WAIT`].
    fn drop(&mut self) {
        drop(self.sender.take());
        if self.pending() == 0 {
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            tracing::debug!(
                pending = self.pending(),
                "app dropped with deferred sends buffered; its publisher stores them in the background while the runtime runs"
            );
            return;
        }
        let shared = self.shared.clone();
        let finished = tokio::task::block_in_place(move || {
            let guard = shared
                .finished
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (guard, _) = shared
                .finished_changed
                .wait_timeout_while(guard, DROP_WAIT, |finished| !*finished)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *guard
        });
        if !finished {
            tracing::warn!(
                pending = self.pending(),
                "app dropped: its deferred publisher did not finish within {DROP_WAIT:?}; it carries on in the background while the runtime runs"
            );
        }
    }
}

/// The error of a send or flush when the publisher is gone.
fn stopped(task_ids: Vec<String>) -> Error {
    Error::PublishFailed {
        task_ids,
        source: Arc::new(BrokerError::Connection(
            "the app's deferred publisher has stopped (its runtime is shutting down)".into(),
        )),
    }
}

/// The publisher task: takes everything waiting, publishes it in one call, answers
/// flush markers once everything before them is done.
async fn run(broker: Arc<dyn Broker>, mut receiver: mpsc::Receiver<Item>, shared: Arc<Shared>) {
    let _finish = FinishGuard(shared.clone());
    let mut items = Vec::with_capacity(BATCH_CAP);
    let mut batch = Batch::default();
    while receiver.recv_many(&mut items, BATCH_CAP).await > 0 {
        for item in items.drain(..) {
            match item {
                Item::Send {
                    id,
                    publishes,
                    events,
                } => {
                    batch.ids.push(id);
                    batch.publishes.extend(publishes);
                    batch.events.extend(events);
                }
                Item::Flush(reply) => {
                    batch.publish(broker.as_ref(), &shared).await;
                    let _ = reply.send(());
                }
            }
        }
        batch.publish(broker.as_ref(), &shared).await;
    }
}

/// Sends collected for one publish.
#[derive(Default)]
struct Batch {
    ids: Vec<String>,
    publishes: Vec<Publish>,
    events: Vec<Broadcast>,
}

impl Batch {
    async fn publish(&mut self, broker: &dyn Broker, shared: &Shared) {
        if self.ids.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.ids);
        let publishes = std::mem::take(&mut self.publishes);
        let events = std::mem::take(&mut self.events);
        match broker.publish(publishes).await {
            Ok(()) => {
                for event in events {
                    if let Err(error) = broker.broadcast(event).await {
                        tracing::debug!(%error, "sending task-sent failed");
                        break;
                    }
                }
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    count = ids.len(),
                    task_ids = ?ids,
                    "deferred publish failed: these tasks were not sent (reported by the next send and by App::flush)"
                );
                shared.record(Failure {
                    task_ids: ids.clone(),
                    error: Arc::new(error),
                });
            }
        }
        shared.pending.fetch_sub(ids.len(), Ordering::SeqCst);
    }
}
