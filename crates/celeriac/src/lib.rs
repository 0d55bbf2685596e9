//! celeriac: a distributed task queue in Rust that speaks Celery's wire protocol.
//!
//! ```no_run
//! use celeriac::prelude::*;
//!
//! #[task(name = "notify.send", queue = "short-task")]
//! async fn send_notification(user_id: u64, text: String) -> TaskResult<()> {
//!     println!("to {user_id}: {text}");
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), celeriac::Error> {
//! let app = App::builder("proj")
//!     .broker("sqlite://celeriac.db")
//!     .queue(Queue::new("short-task").routing_key("short.#"))
//!     .task(send_notification)
//!     .build()
//!     .await?;
//! let result = send_notification::delay(&app, 7, "hi".into()).await?;
//! result.get(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`App`] / [`AppBuilder`]: configuration, tasks, routing, connections; sending.
//! - [`AsyncResult`]: waiting for and reading results.
//! - [`task`]: the `#[task]` attribute (from `celeriac-macros`).
//! - [`control`]: remote control of workers (`ping`, `inspect`, `revoke`, ...).
//! - [`cli`]: the command line every celeriac binary gets (`worker`, `call`, ...).
//! - Re-exported seams: [`core`], [`broker`], [`backend`], [`worker`], [`lock`],
//!   [`beat`] (schedules, the schedule store, the beat service).
//!
//! # Single-instance tasks and unique enqueue
//!
//! `#[task(single_instance, lock_key = "customer_id", on_conflict = "wait")]` runs at
//! most one instance at a time per lock key; `SendOptions::new().unique(Unique::new(ttl))`
//! refuses a second identical send while the first is queued or running
//! ([`Error::Duplicate`]). Both use the lock store of [`App::locks`]: the broker's
//! SQLite file (other brokers have none yet). See [`lock`] for the lease, owner-token
//! and fencing-number design.
//!
//! # Publish confirms
//!
//! By default each `delay` / `send_task` returns once the broker stored its message
//! (one round trip per send). [`PublishConfirms::Deferred`]
//! ([`AppBuilder::publish_confirms`], `CELERIAC_TASK_PUBLISH_CONFIRMS=deferred`)
//! returns at once and lets a background publisher store the sends in batches;
//! [`App::flush`] waits for them and returns a failed publish
//! ([`Error::PublishFailed`]), as does the next send.
//!
//! # Allocator
//!
//! A worker allocates and frees a few dozen small blocks per message. The `celeriac`
//! binary uses mimalloc (the `mimalloc` crate with its `no_thp` feature) as its
//! global allocator, which took a quarter off a Redis drain's instructions against
//! glibc's malloc (BENCHMARKS.md); a worker binary of your own
//! ([`cli::run`]) chooses its allocator the same way, with a `#[global_allocator]`
//! static in its `main.rs`.

#![doc(html_root_url = "https://docs.rs/celeriac")]

pub mod app;
pub mod canvas;
pub mod cli;
pub mod control;
pub mod error;
mod publisher;
pub mod result;
pub mod runtime;

pub use app::{App, AppBuilder, TaskCall, BATCH_CHUNK};
pub use celeriac_backend as backend;
pub use celeriac_beat as beat;
pub use celeriac_broker as broker;
pub use celeriac_core as core;
pub use celeriac_dashboard as dashboard;
pub use celeriac_lock as lock;
pub use celeriac_macros::task;
pub use celeriac_worker as worker;
pub use error::Error;
pub use result::{AsyncResult, GroupResult};

pub use celeriac_core::config::PublishConfirms;
pub use celeriac_core::options::Unique;
pub use celeriac_core::task::{KeyArg, LockKey, OnConflict, SingleInstance};
pub use celeriac_core::{
    Queue, Route, SendOptions, Settings, TaskContext, TaskError, TaskOptions, TaskResult,
};

/// Everything a task module needs.
pub mod prelude {
    pub use crate::{task, App, AsyncResult, Error, PublishConfirms, Unique};
    pub use celeriac_core::routing::{Exchange, Queue, Route};
    pub use celeriac_core::{CancelReason, SendOptions, TaskContext, TaskError, TaskResult};
}

/// Items used by code that `#[task]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use celeriac_core;
    pub use celeriac_core::task::ArgBinder;
    pub use serde_json;
    pub use tokio;
}
