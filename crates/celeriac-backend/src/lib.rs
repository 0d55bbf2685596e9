//! The `ResultBackend` seam: task states and results, stored in Celery's format.
//!
//! # Layout
//!
//! - this module: the [`ResultBackend`] trait and [`connect`].
//! - [`sqlite`] (feature `sqlite`, default): results in a SQLite file, which may be the
//!   broker's file.
//! - [`redis`] (feature `redis`, default): results in Redis, exactly as
//!   Celery's Redis result backend stores them.
//! - `testing` (feature `testing`): the conformance suite.
//!
//! # Contract
//!
//! - [`ResultBackend::store`] never overwrites a stored SUCCESS (Celery's dedupe
//!   guard): a redelivered task that already succeeded cannot turn into a FAILURE.
//! - Results expire after the given duration; expired results read as absent.
//!   `Some(Duration::ZERO)` means "never", like Celery's `result_expires = 0`.
//! - [`ResultBackend::wait`] returns as soon as the task reaches a ready state
//!   (SUCCESS, FAILURE, REVOKED), woken by a notification where the store has one.
//! - Saved groups ([`ResultBackend::save_group`]) are Celery's
//!   `celery-taskset-meta-<gid>` values ([`group`]); saving again replaces the
//!   value, and they expire like results.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{TaskMeta, TaskState};

pub use chord::{ChordPart, ChordPartResult, ChordProgress};
pub use group::{ResultTuple, SavedGroup};

pub mod chord;
pub mod group;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// Errors of result backend operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The URL cannot be used.
    #[error("invalid result backend URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend cannot be reached.
    #[error("result backend connection failed: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend's store failed.
    #[error("result backend storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value could not be read.
    #[error("corrupt result for task {task_id}: {reason}")]
    Corrupt {
        /// Task id.
        task_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend does not implement this operation.
    #[error("the result backend {backend} does not support {operation}")]
    Unsupported {
        /// The backend, as [`ResultBackend::describe`] names it.
        backend: String,
        /// The operation, e.g. `"recent"`.
        operation: &'static str,
    },
}

impl BackendError {
    /// Wraps a storage error.
    pub fn storage<E: std::error::Error + Send + Sync + 'static>(error: E) -> BackendError {
        BackendError::Storage(Box::new(error))
    }
}

/// What [`ResultBackend::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The meta was written.
    Stored,
    /// A SUCCESS was already stored and was kept.
    KeptSuccess,
}

/// Which stored results [`ResultBackend::recent`] lists.
///
/// Build it with struct update syntax so new fields do not break callers:
/// `ResultQuery { state: Some(TaskState::Failure), ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultQuery {
    /// Only results in this state; `None` for every state.
    pub state: Option<TaskState>,
    /// At most this many results (default 100; 0 lists nothing).
    pub limit: usize,
}

impl Default for ResultQuery {
    fn default() -> Self {
        ResultQuery {
            state: None,
            limit: 100,
        }
    }
}

/// Stores task results. See the crate docs for the contract.
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// A short description for logs, without secrets.
    fn describe(&self) -> String;

    /// Stores `meta` for `meta.task_id`, expiring after `expires` (`None` or zero =
    /// never). A stored SUCCESS is kept ([`StoreOutcome::KeptSuccess`]).
    async fn store(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
    ) -> Result<StoreOutcome, BackendError>;

    /// Stores several metas at once (the worker batches); same rules as `store`.
    async fn store_many(
        &self,
        metas: &[TaskMeta],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        for meta in metas {
            self.store(meta, expires).await?;
        }
        Ok(())
    }

    /// The stored meta, or `None` (PENDING) if absent or expired.
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError>;

    /// Waits until the task is ready or `timeout` passes; returns the ready meta, or
    /// `None` on timeout.
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError>;

    /// Deletes the stored result.
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Deletes expired results; returns how many.
    async fn cleanup_expired(&self) -> Result<u64, BackendError>;

    /// The most recently stored results matching `query`, newest first; expired
    /// results are left out. For the CLI and the dashboard.
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn recent(&self, query: &ResultQuery) -> Result<Vec<TaskMeta>, BackendError> {
        let _ = query;
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "recent",
        })
    }

    /// How many unexpired results are stored in each state (states without results
    /// are left out).
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn count_by_state(&self) -> Result<Vec<(TaskState, u64)>, BackendError> {
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "count_by_state",
        })
    }

    /// Records the size of chord `group_id` (the number of header tasks) before its
    /// header is published, and forgets a finished earlier run of the same group id.
    /// Expires after `expires` (`None` or zero = never).
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn chord_set_size(
        &self,
        group_id: &str,
        size: u64,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let _ = (group_id, size, expires);
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "chords",
        })
    }

    /// Records a header task's outcome, once per task id and header index however
    /// often it is reported, and tells whether this call completed the chord (it then
    /// holds the dispatch claim for `claim_ttl`). See [`chord`].
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn chord_part_return(
        &self,
        part: &ChordPart,
        expires: Option<Duration>,
        claim_ttl: Duration,
    ) -> Result<ChordProgress, BackendError> {
        let _ = (part, expires, claim_ttl);
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "chords",
        })
    }

    /// Extends the dispatch claim of chord `group_id` to `ttl` from now if `claim`
    /// still holds it; `false` when it was lost (then the body is not published).
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn chord_extend_claim(
        &self,
        group_id: &str,
        claim: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let _ = (group_id, claim, ttl);
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "chords",
        })
    }

    /// After the body was dispatched (or failed): deletes the chord's bookkeeping if
    /// `claim` still holds it and leaves a `done` marker so late duplicates of header
    /// tasks do nothing. Returns whether the claim was still held.
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn chord_finish(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        let _ = (group_id, claim);
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "chords",
        })
    }
    /// Saves a group result (Celery's `GroupResult.save()`), replacing an earlier
    /// save of the same id, expiring after `expires` (`None` or zero = never).
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn save_group(
        &self,
        group: &SavedGroup,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let _ = (group, expires);
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "saved groups",
        })
    }

    /// The saved group `group_id` (Celery's `GroupResult.restore()`), or `None` if
    /// it was never saved, was forgotten or expired.
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn restore_group(&self, group_id: &str) -> Result<Option<SavedGroup>, BackendError> {
        let _ = group_id;
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "saved groups",
        })
    }

    /// Deletes the saved group (Celery's `GroupResult.forget()` deletes it with the
    /// members' results; this deletes only the group value).
    ///
    /// The default implementation returns [`BackendError::Unsupported`].
    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let _ = group_id;
        Err(BackendError::Unsupported {
            backend: self.describe(),
            operation: "saved groups",
        })
    }
}

/// Opens the result backend named by `url` (`sqlite://path`; `redis://`, `rediss://`,
/// `redis+socket://`, `unix://` with the `redis` feature).
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn ResultBackend>, BackendError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(std::sync::Arc::new(
            sqlite::SqliteBackend::open_url(url).await?,
        )),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+socket" | "unix" => Ok(std::sync::Arc::new(
            crate::redis::RedisBackend::open_url(url).await?,
        )),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+socket" | "unix" => Err(BackendError::InvalidUrl {
            url: url.to_string(),
            reason: "this build of celeriac-backend lacks the `redis` feature".into(),
        }),
        _ => Err(BackendError::InvalidUrl {
            url: url.to_string(),
            reason: "expected sqlite://PATH or redis://HOST[:PORT][/DB]".into(),
        }),
    }
}
