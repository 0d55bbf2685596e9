//! Handles to task results.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use celeriac_backend::{ResultBackend, ResultTuple, SavedGroup};
use celeriac_core::{ExceptionInfo, TaskMeta, TaskState, Value};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The result of one task, typed by its return value (`Value` when sent by name).
pub struct AsyncResult<R = Value> {
    id: String,
    backend: Option<Arc<dyn ResultBackend>>,
    _result: PhantomData<fn() -> R>,
}

impl<R> Clone for AsyncResult<R> {
    fn clone(&self) -> Self {
        AsyncResult {
            id: self.id.clone(),
            backend: self.backend.clone(),
            _result: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult").field("id", &self.id).finish()
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// A handle to the result of `id` in `backend`.
    pub fn new(id: String, backend: Option<Arc<dyn ResultBackend>>) -> Self {
        AsyncResult {
            id,
            backend,
            _result: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> Result<&Arc<dyn ResultBackend>, Error> {
        self.backend.as_ref().ok_or(Error::NoBackend)
    }

    /// The stored meta (PENDING when nothing is stored).
    pub async fn meta(&self) -> Result<TaskMeta, Error> {
        Ok(self
            .backend()?
            .get(&self.id)
            .await?
            .unwrap_or_else(|| TaskMeta::pending(self.id.clone())))
    }

    /// The current state.
    pub async fn state(&self) -> Result<TaskState, Error> {
        Ok(self.meta().await?.status)
    }

    /// Whether the task reached SUCCESS, FAILURE or REVOKED.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.state().await?.is_ready())
    }

    /// Waits up to `timeout` for the task and returns its value; a failure or revoke
    /// becomes an [`Error`].
    pub async fn get(&self, timeout: Duration) -> Result<R, Error> {
        let meta = self
            .backend()?
            .wait(&self.id, timeout)
            .await?
            .ok_or_else(|| Error::Timeout {
                task_id: self.id.clone(),
                waited: timeout,
            })?;
        Self::value_of(meta)
    }

    /// Converts a ready meta into the typed value or an error.
    pub fn value_of(meta: TaskMeta) -> Result<R, Error> {
        match meta.status {
            TaskState::Success => serde_json::from_value(meta.result)
                .map_err(|e| Error::Encode(format!("result of task {}: {e}", meta.task_id))),
            TaskState::Revoked => {
                let reason = meta
                    .exception()
                    .map(|e| e.message())
                    .unwrap_or_else(|| "revoked".into());
                Err(Error::Revoked {
                    task_id: meta.task_id,
                    reason,
                })
            }
            _ => {
                let exception = meta.exception().unwrap_or_else(|| {
                    ExceptionInfo::new("Exception", "builtins", meta.result.to_string())
                });
                Err(Error::TaskFailed {
                    task_id: meta.task_id,
                    exception,
                    traceback: meta.traceback,
                })
            }
        }
    }

    /// Deletes the stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        self.backend()?.forget(&self.id).await?;
        Ok(())
    }
}

/// The results of a group's members, in member order (Celery's `GroupResult`).
///
/// [`GroupResult::save`] stores it as Celery's `GroupResult.save()` does
/// (`celery-taskset-meta-<gid>` on Redis), so Python's `GroupResult.restore(gid)`
/// reads it, and [`GroupResult::restore`] reads groups Python saved.
#[derive(Debug, Clone)]
pub struct GroupResult {
    id: String,
    results: Vec<AsyncResult<Value>>,
}

impl GroupResult {
    /// A group `id` of the member `results`, in order.
    pub fn new(id: String, results: Vec<AsyncResult<Value>>) -> GroupResult {
        GroupResult { id, results }
    }

    /// The group saved as `group_id` in `backend` (Celery's `GroupResult.restore`),
    /// its members in order; `None` if it was never saved, was forgotten or expired.
    /// Groups whose members are groups themselves are refused with
    /// [`Error::Workflow`] (this handle holds task results only).
    pub async fn restore(
        backend: Arc<dyn ResultBackend>,
        group_id: &str,
    ) -> Result<Option<GroupResult>, Error> {
        let Some(saved) = backend.restore_group(group_id).await? else {
            return Ok(None);
        };
        let mut results = Vec::with_capacity(saved.members.len());
        for member in saved.members {
            match member {
                ResultTuple::Task { id, .. } => {
                    results.push(AsyncResult::new(id, Some(Arc::clone(&backend))))
                }
                ResultTuple::Group(inner) => {
                    return Err(Error::Workflow(format!(
                        "the saved group {group_id} has a nested group {} as a member; \
                         restoring nested groups is not supported",
                        inner.id
                    )))
                }
            }
        }
        Ok(Some(GroupResult::new(saved.id, results)))
    }

    /// Saves the group in its members' result backend (Celery's `GroupResult.save()`),
    /// expiring after `expires` (`None` or zero = never; Celery uses
    /// `result_expires`, see [`Settings::result_expires`](celeriac_core::config::Settings::result_expires)).
    /// Fails with [`Error::NoBackend`] when the members have no backend (or there are
    /// none).
    pub async fn save(&self, expires: Option<Duration>) -> Result<(), Error> {
        let backend = self.member_backend()?;
        let saved = SavedGroup::of_tasks(&self.id, self.results.iter().map(|r| r.id.clone()));
        backend.save_group(&saved, expires).await?;
        Ok(())
    }

    /// Deletes the saved group value (the members' results stay; forget those with
    /// [`AsyncResult::forget`]).
    pub async fn forget(&self) -> Result<(), Error> {
        self.member_backend()?.forget_group(&self.id).await?;
        Ok(())
    }

    fn member_backend(&self) -> Result<&Arc<dyn ResultBackend>, Error> {
        self.results
            .first()
            .and_then(|r| r.backend.as_ref())
            .ok_or(Error::NoBackend)
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' result handles, in order.
    pub fn results(&self) -> &[AsyncResult<Value>] {
        &self.results
    }

    /// Waits up to `timeout` in all for every member; returns their values in order,
    /// or the first failure (in member order).
    pub async fn get(&self, timeout: Duration) -> Result<Vec<Value>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut values = Vec::with_capacity(self.results.len());
        for result in &self.results {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            values.push(result.get(left).await?);
        }
        Ok(values)
    }

    /// Whether every member reached SUCCESS, FAILURE or REVOKED.
    pub async fn ready(&self) -> Result<bool, Error> {
        for result in &self.results {
            if !result.ready().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
