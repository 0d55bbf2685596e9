//! Result metadata in Celery's format (`celery-task-meta-<id>`).

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::state::TaskState;

/// The stored result of one task, field for field as Celery's backends write it.
///
/// A worker running with `result_extended` writes the six keys `name`, `args`, `kwargs`,
/// `worker`, `retries` and `queue` together, `null` when the request did not carry them
/// (an unregistered task stores all six as `null`). Such a record reads with `args` and
/// `kwargs` set (to `Value::Null` when written as `null`), and whenever `args` or
/// `kwargs` is set all six keys are written, so Python's records are reproduced exactly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TaskMeta {
    /// Current state.
    pub status: TaskState,
    /// Return value (SUCCESS), exception dict (FAILURE/RETRY/REVOKED) or custom meta.
    #[serde(default)]
    pub result: Value,
    /// Traceback or error chain, if any.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Result tuples of tasks sent from inside this task (Celery writes `null` when a
    /// result is stored outside a task; that reads as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub children: Vec<Value>,
    /// ISO-8601 UTC completion time, for ready states.
    #[serde(default)]
    pub date_done: Option<String>,
    /// Group id, when the task was a group or chord member.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Id of the task that sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Task name (`result_extended`).
    #[serde(default)]
    pub name: Option<String>,
    /// Positional arguments (`result_extended`); `Some(Value::Null)` when written as `null`.
    #[serde(default, deserialize_with = "present_value")]
    pub args: Option<Value>,
    /// Keyword arguments (`result_extended`); `Some(Value::Null)` when written as `null`.
    #[serde(default, deserialize_with = "present_value")]
    pub kwargs: Option<Value>,
    /// Worker node name (`result_extended`).
    #[serde(default)]
    pub worker: Option<String>,
    /// Retry count (`result_extended`).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Delivery queue (`result_extended`).
    #[serde(default)]
    pub queue: Option<String>,
    /// The task id.
    pub task_id: String,
}

/// A key that is present reads as `Some`, even when its value is `null`.
fn present_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Serialize for TaskMeta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Celery's key order; optional keys only when set, the `result_extended` block
        // whole (see the type's docs).
        let extended = self.args.is_some() || self.kwargs.is_some();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("result", &self.result)?;
        map.serialize_entry("traceback", &self.traceback)?;
        map.serialize_entry("children", &self.children)?;
        map.serialize_entry("date_done", &self.date_done)?;
        if let Some(group_id) = &self.group_id {
            map.serialize_entry("group_id", group_id)?;
        }
        if let Some(parent_id) = &self.parent_id {
            map.serialize_entry("parent_id", parent_id)?;
        }
        if extended || self.name.is_some() {
            map.serialize_entry("name", &self.name)?;
        }
        if let Some(args) = &self.args {
            map.serialize_entry("args", args)?;
        }
        if let Some(kwargs) = &self.kwargs {
            map.serialize_entry("kwargs", kwargs)?;
        }
        if extended || self.worker.is_some() {
            map.serialize_entry("worker", &self.worker)?;
        }
        if extended || self.retries.is_some() {
            map.serialize_entry("retries", &self.retries)?;
        }
        if extended || self.queue.is_some() {
            map.serialize_entry("queue", &self.queue)?;
        }
        map.serialize_entry("task_id", &self.task_id)?;
        map.end()
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Value>, D::Error> {
    Ok(Option::<Vec<Value>>::deserialize(deserializer)?.unwrap_or_default())
}

impl TaskMeta {
    /// A meta record for `task_id` in `status` with `result`; everything else empty.
    pub fn new(task_id: impl Into<String>, status: TaskState, result: Value) -> TaskMeta {
        let date_done = status
            .is_ready()
            .then(|| crate::time::format_iso(chrono::Utc::now()));
        TaskMeta {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done,
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            task_id: task_id.into(),
        }
    }

    /// What an unknown id reads as.
    pub fn pending(task_id: impl Into<String>) -> TaskMeta {
        TaskMeta::new(task_id, TaskState::Pending, Value::Null)
    }

    /// The exception carried by an exception state, if the result holds one.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if !self.status.is_exception() {
            return None;
        }
        ExceptionInfo::from_value(&self.result)
    }
}

/// An exception as it travels in results: `{"exc_type", "exc_message": [...], "exc_module"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Class name, e.g. `"ValueError"`.
    pub exc_type: String,
    /// Exception arguments.
    #[serde(default)]
    pub exc_message: Vec<Value>,
    /// Module of the class (`"builtins"`, `"celery.exceptions"`; celeriac errors use `"rust"`).
    #[serde(default)]
    pub exc_module: String,
}

impl ExceptionInfo {
    /// An exception with one string argument.
    pub fn new(
        exc_type: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> ExceptionInfo {
        ExceptionInfo {
            exc_type: exc_type.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: module.into(),
        }
    }

    /// Celery's `TaskRevokedError(reason)` (`"revoked"`, `"expired"`, `"terminated"`).
    pub fn revoked(reason: &str) -> ExceptionInfo {
        ExceptionInfo::new("TaskRevokedError", "celery.exceptions", reason)
    }

    /// Celery's `NotRegistered(name)`.
    pub fn not_registered(task: &str) -> ExceptionInfo {
        ExceptionInfo::new("NotRegistered", "celery.exceptions", task)
    }

    /// Reads an exception dict; `None` if the value is not one.
    pub fn from_value(value: &Value) -> Option<ExceptionInfo> {
        let object: &Map<String, Value> = value.as_object()?;
        object.get("exc_type")?.as_str()?;
        serde_json::from_value(value.clone()).ok()
    }

    /// The exception dict as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The message: the exception arguments joined as text.
    pub fn message(&self) -> String {
        self.exc_message
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.exc_type, self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn celery_failure_meta_reads_and_writes_back() {
        let raw = json!({
            "status": "FAILURE",
            "result": {"exc_type": "ValueError", "exc_message": ["kaboom"], "exc_module": "builtins"},
            "traceback": "Traceback ...",
            "children": [],
            "date_done": "2026-11-26T16:01:56.251737+00:00",
            "task_id": "boom-0004"
        });
        let meta: TaskMeta = serde_json::from_value(raw.clone()).expect("parses");
        assert_eq!(meta.status, TaskState::Failure);
        let exc = meta.exception().expect("exception");
        assert_eq!(exc.exc_type, "ValueError");
        assert_eq!(exc.message(), "kaboom");
        assert_eq!(serde_json::to_value(&meta).expect("json"), raw);
    }

    #[test]
    fn result_extended_keys_are_written_together_even_when_null() {
        // An unregistered task on a result_extended=True Python worker.
        let raw = json!({
            "status": "FAILURE",
            "result": {"exc_type": "NotRegistered", "exc_message": ["tasks.nope"], "exc_module": "celery.exceptions"},
            "traceback": null,
            "children": [],
            "date_done": "2026-11-26T16:04:27.871046+00:00",
            "name": null, "args": null, "kwargs": null, "worker": null, "retries": null, "queue": null,
            "task_id": "unknown-task"
        });
        let meta: TaskMeta = serde_json::from_value(raw.clone()).expect("parses");
        assert_eq!(
            (meta.name.as_deref(), meta.args.clone()),
            (None, Some(Value::Null))
        );
        assert_eq!(serde_json::to_value(&meta).expect("json"), raw);

        // Without the block nothing is added, and a lone field stays alone.
        let mut meta = TaskMeta::new("a", TaskState::Success, json!(1));
        assert!(serde_json::to_value(&meta)
            .expect("json")
            .get("name")
            .is_none());
        meta.name = Some("t".into());
        let written = serde_json::to_value(&meta).expect("json");
        assert_eq!(
            (written.get("name"), written.get("args")),
            (Some(&json!("t")), None)
        );
        assert_eq!(
            serde_json::from_value::<TaskMeta>(written).expect("parses"),
            meta
        );
    }

    #[test]
    fn null_children_read_as_empty() {
        let meta: TaskMeta = serde_json::from_value(serde_json::json!({
            "status": "SUCCESS", "result": 1, "traceback": null, "children": null,
            "date_done": null, "task_id": "t"
        }))
        .expect("Celery's store_result outside a task writes children: null");
        assert!(meta.children.is_empty());
    }

    #[test]
    fn ready_states_get_a_date_done() {
        assert!(TaskMeta::new("a", TaskState::Success, json!(1))
            .date_done
            .is_some());
        assert!(TaskMeta::new("a", TaskState::Started, json!(null))
            .date_done
            .is_none());
    }
}
