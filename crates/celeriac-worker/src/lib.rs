//! The celeriac worker: takes task messages from a [`Broker`], runs them, stores
//! results in a [`ResultBackend`], and never loses a message on the way.
//!
//! # Layout
//!
//! The worker is a set of named services sharing one state, each ending on a
//! cancellation token:
//!
//! - **consumers** (one per queue, [`worker`]): reserve messages only while the queue's
//!   prefetch window (`concurrency × prefetch_multiplier`) has room, so a busy
//!   `long-task` queue never holds back `short-task` messages; each queue has its own
//!   slots, prefetch and ack mode.
//! - **executor** ([`executor`]): per message: decode, refuse what cannot run (dead
//!   letter with the reason, FAILURE stored when the task id is known), expiry and
//!   revoke checks, ETA wait, rate limit, a free slot, then the task under its soft and
//!   hard time limits, and the outcome (success, failure, retry as a new message,
//!   reject, ignore).
//! - **completer** ([`completer`]): batches results and acks; a result is stored before
//!   its late ack, and failed writes are retried, not dropped.
//! - **lease renewer**: renews the lease of every held message (reserved, waiting for
//!   its ETA, or running) every third of the lease, so a long task is never
//!   delivered twice while this worker lives.
//! - **rescuer**: restores messages whose lease lapsed (their worker died) and
//!   deletes expired results every few minutes.
//! - **locks** ([`locks`]): the single-instance lock taken once a run has a slot,
//!   renewed every third of its lease while the task runs and released as soon as it
//!   ends (conflict policy: skip, retry, wait); and the unique-enqueue lock of a
//!   message, released when its task reaches a final outcome.
//! - **events** (`events`): Celery's `worker-online` / `worker-heartbeat` (every
//!   2 s) / `worker-offline` events, and task events when on (`-E`), published off the
//!   hot path in batches on the `celeryev` exchange.
//! - **control** (`control`): kombu's pidbox remote control (`celery inspect`,
//!   `celery control`, `celeriac inspect`, `celeriac control`).
//! - **heartbeat**: records the worker's liveness and load in the broker's worker
//!   registry every 2 s, and marks it offline on shutdown (`celeriac workers`).
//!
//! Shutdown is two-phase ([`Worker::run_until`]): stop fetching and return unstarted
//! messages to the broker; running tasks get `shutdown_timeout` to finish, then are
//! cancelled and their late-ack messages returned.
//!
//! # Time limits and blocking tasks
//!
//! The soft limit cancels the task's [`celeriac_core::TaskContext`] (async tasks can
//! `select!` on `ctx.cancelled()`, blocking tasks poll `ctx.is_cancelled()`). At the
//! hard limit an async task's future is dropped: it stops at its next await point. A
//! blocking task runs on its own thread, which Rust cannot stop safely: its slot is
//! freed, its result recorded as `TimeLimitExceeded`, and the thread is left to finish
//! in the background (its return value discarded). Blocking code that may hang should
//! check `ctx.is_cancelled()`.

pub mod apply;
pub mod builtins;
mod canvas;
pub mod completer;
pub mod config;
pub(crate) mod control;
pub(crate) mod events;
pub mod executor;
pub mod locks;
pub mod rate;
pub mod revoked;
pub mod stats;
pub mod worker;

pub use config::{QueueSettings, WorkerConfig};
pub use stats::{StatsSnapshot, WorkerStats};
pub use worker::{Worker, WorkerHandle};

use celeriac_backend::ResultBackend;
use celeriac_broker::Broker;
