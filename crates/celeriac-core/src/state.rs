//! Task states, as Celery names them.
//!
//! ```text
//!            publish                 worker takes it        task body runs
//! PENDING ───────────► (queued) ───► RECEIVED ───────────► STARTED
//!                                       │                     │
//!                         expired/revoked│      ┌──────────────┼───────────────┐
//!                                       ▼      ▼              ▼               ▼
//!                                    REVOKED  RETRY ──►   SUCCESS          FAILURE
//!                                             (new message, retries+1)
//! ```
//!
//! `PENDING` is never stored: it is what an unknown id reads as. Ready states are
//! SUCCESS, FAILURE and REVOKED; a stored SUCCESS is never overwritten.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The state of one task id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Unknown to the backend (not yet run, or forgotten).
    Pending,
    /// Taken by a worker, not started yet.
    Received,
    /// Running (stored only when `task_track_started` is on).
    Started,
    /// Finished and returned a value.
    Success,
    /// Raised an error, exceeded a limit or could not run.
    Failure,
    /// Failed and was sent again with `retries + 1`.
    Retry,
    /// Revoked or expired; not run.
    Revoked,
    /// Rejected by the task.
    Rejected,
    /// Ignored by the task; no state to report.
    Ignored,
    /// A custom state set by a task.
    Custom(String),
}

impl TaskState {
    /// The wire name, e.g. `"SUCCESS"`.
    pub fn as_str(&self) -> &str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Retry => "RETRY",
            TaskState::Revoked => "REVOKED",
            TaskState::Rejected => "REJECTED",
            TaskState::Ignored => "IGNORED",
            TaskState::Custom(name) => name,
        }
    }

    /// Parses a wire name; unknown names become [`TaskState::Custom`].
    pub fn parse(name: &str) -> TaskState {
        match name {
            "PENDING" => TaskState::Pending,
            "RECEIVED" => TaskState::Received,
            "STARTED" => TaskState::Started,
            "SUCCESS" => TaskState::Success,
            "FAILURE" => TaskState::Failure,
            "RETRY" => TaskState::Retry,
            "REVOKED" => TaskState::Revoked,
            "REJECTED" => TaskState::Rejected,
            "IGNORED" => TaskState::Ignored,
            other => TaskState::Custom(other.to_string()),
        }
    }

    /// SUCCESS, FAILURE or REVOKED: the task will not change state again.
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }

    /// States whose result is an exception dict (RETRY, FAILURE, REVOKED).
    pub fn is_exception(&self) -> bool {
        matches!(
            self,
            TaskState::Retry | TaskState::Failure | TaskState::Revoked
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(TaskState::parse(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ready_states_are_celerys() {
        for name in [
            "PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED",
        ] {
            assert_eq!(TaskState::parse(name).as_str(), name);
        }
        assert_eq!(
            TaskState::parse("PROGRESS"),
            TaskState::Custom("PROGRESS".into())
        );
        assert!(TaskState::Success.is_ready() && TaskState::Revoked.is_ready());
        assert!(!TaskState::Retry.is_ready() && !TaskState::Started.is_ready());
    }
}
