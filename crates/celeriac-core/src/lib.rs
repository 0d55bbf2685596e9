//! The small, stable core of celeriac: Celery's protocol v2 message model, the task
//! trait and its context, task states and result metadata, routing and configuration.
//!
//! Every other crate speaks in these types. Nothing here does I/O: brokers, result
//! backends and the worker live in their own crates and depend on this one.
//!
//! # Layout
//!
//! - [`message`]: the transport envelope (headers, properties, body bytes) and the
//!   decoded task message of protocol v2 (`[args, kwargs, embed]`), with the kombu
//!   Redis JSON envelope codec. Protocol v1, pickle and YAML are refused with a clear
//!   [`DecodeError`].
//! - [`headers`]: an envelope's headers, kept as the JSON text they arrived in
//!   until read as a map (the task decoder reads the text directly).
//! - [`time`]: Celery's ISO-8601 date-time dialect (naive means UTC).
//! - [`state`] and [`result`]: task states and the result meta Celery stores.
//! - [`task`]: the [`Task`] trait implemented by `#[task]`, [`TaskOptions`],
//!   [`TaskContext`] and the typed outcomes a task can return ([`TaskError`]).
//! - [`routing`]: queues, exchanges, topic patterns and `task_routes`.
//! - [`canvas`]: signatures as sends (chain steps, `link`, `link_error`).
//! - [`config`]: [`Settings`] with Celery's names, loaded from `celeriac.toml`, the
//!   `CELERIAC_*` environment and overrides.
//! - [`options`]: per-call send options (`queue`, `countdown`, `eta`, ...).
//! - [`event`]: Celery's task and worker events (`task-succeeded`, `worker-heartbeat`).
//! - [`pidbox`]: remote-control requests and replies (kombu's pidbox).
//! - [`signing`]: optional HMAC-SHA256 message signing with a shared key.
//! - [`limits`]: rate limits (`"100/m"`), durations (`"30m"`) and retry backoff.

pub mod canvas;
pub mod config;
pub mod event;
pub mod headers;
pub mod limits;
pub mod message;
pub mod options;
pub mod pidbox;
pub mod result;
pub mod routing;
pub mod signing;
pub mod state;
pub mod task;
pub mod time;

pub use config::{ConfigError, Settings};
pub use headers::Headers;
pub use limits::{Backoff, RateLimit};
pub use message::{DecodeError, Embed, Envelope, Properties, Signature, TaskHeaders, TaskMessage};
pub use options::SendOptions;
pub use result::{ExceptionInfo, TaskMeta};
pub use routing::{Exchange, ExchangeKind, Queue, Route, Router, RoutingError};
pub use state::TaskState;
pub use task::{
    CancelReason, FnTask, Task, TaskContext, TaskError, TaskFailure, TaskFuture, TaskOptions,
    TaskRegistry, TaskResult, TaskSender,
};

/// JSON values as they travel in task arguments and results.
pub use serde_json::{Map, Value};
