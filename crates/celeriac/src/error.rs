//! The errors of the celeriac API.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::ExceptionInfo;

/// Anything that can go wrong at the API's edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] celeriac_core::ConfigError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] celeriac_broker::BrokerError),
    /// Sends made with deferred publish confirms
    /// ([`PublishConfirms::Deferred`](crate::PublishConfirms::Deferred)) were not
    /// stored by the broker (after its own retries). Returned by the next send and by
    /// [`App::flush`](crate::App::flush), with the first error.
    #[error("{} task(s) sent with deferred publish confirms were not published ({}): {source}", .task_ids.len(), id_list(.task_ids))]
    PublishFailed {
        /// Ids of the tasks that were not published: every one that failed since
        /// the last report (flush, or for a send, the last send that reported).
        task_ids: Vec<String>,
        /// The broker's error.
        source: Arc<celeriac_broker::BrokerError>,
    },
    /// The result backend failed.
    #[error(transparent)]
    Backend(#[from] celeriac_backend::BackendError),
    /// The lock store failed, or there is none for this broker.
    #[error(transparent)]
    Lock(#[from] celeriac_lock::LockError),
    /// A unique send was refused: an identical task is queued or running.
    #[error("refused to send {task}: a task with uniqueness key {key:?} is already queued or running (unique enqueue)")]
    Duplicate {
        /// The lock key that is held (`unique:...`).
        key: String,
        /// The task that was not sent.
        task: String,
    },
    /// No queue matches the route.
    #[error(transparent)]
    Routing(#[from] celeriac_core::RoutingError),
    /// An argument or result could not be (de)serialized.
    #[error("cannot encode or decode a value: {0}")]
    Encode(String),
    /// The message is larger than `task_max_message_bytes`.
    #[error("message of {size} bytes exceeds task_max_message_bytes ({limit})")]
    TooLarge {
        /// Message size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// Results are needed but no result backend is configured.
    #[error("no result backend is configured (set result_backend or CELERIAC_RESULT_BACKEND)")]
    NoBackend,
    /// The task did not finish in time.
    #[error("task {task_id} did not finish within {waited:?}")]
    Timeout {
        /// Task id.
        task_id: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The task failed.
    #[error("task {task_id} failed: {exception}")]
    TaskFailed {
        /// Task id.
        task_id: String,
        /// The exception it raised.
        exception: ExceptionInfo,
        /// Its traceback, if any.
        traceback: Option<String>,
    },
    /// A workflow (chain, group, chord) could not be sent.
    #[error("cannot send the workflow: {0}")]
    Workflow(String),
    /// The task was revoked or expired.
    #[error("task {task_id} was revoked ({reason})")]
    Revoked {
        /// Task id.
        task_id: String,
        /// `revoked`, `expired` or `terminated`.
        reason: String,
    },
}

/// The first few task ids, for an error message.
fn id_list(ids: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(", and {} more", ids.len() - SHOWN));
    }
    if text.is_empty() {
        text.push_str("no task ids");
    }
    text
}
