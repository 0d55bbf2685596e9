//! Saved group results: what Celery's `GroupResult.save()` stores under
//! `celery-taskset-meta-<gid>` (PROTOCOL.md §3.4, §7.4), and reads back with
//! `GroupResult.restore(gid)`.
//!
//! The stored value is `{"result": <GroupResult tuple>}`, where a result tuple is
//! Celery's `as_tuple()`:
//!
//! - a task: `[[id, parent], null]`
//! - a group: `[[gid, parent], [member tuples...]]`
//!
//! and `parent` is the parent's result tuple or `null`.

use serde_json::{json, Value};

/// One of Celery's result tuples (`AsyncResult.as_tuple()` / `GroupResult.as_tuple()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultTuple {
    /// A task's result: `[[id, parent], null]`.
    Task {
        /// Task id.
        id: String,
        /// The parent's result tuple (chains), if any.
        parent: Option<Box<ResultTuple>>,
    },
    /// A group's result: `[[gid, parent], [members...]]`.
    Group(SavedGroup),
}

impl ResultTuple {
    /// The result tuple of task `id` without a parent.
    pub fn task(id: impl Into<String>) -> ResultTuple {
        ResultTuple::Task {
            id: id.into(),
            parent: None,
        }
    }

    /// The id of the task or group.
    pub fn id(&self) -> &str {
        match self {
            ResultTuple::Task { id, .. } => id,
            ResultTuple::Group(group) => &group.id,
        }
    }

    /// The tuple as Celery's JSON serializer writes it.
    pub fn to_json(&self) -> Value {
        match self {
            ResultTuple::Task { id, parent } => {
                json!([[id, parent.as_deref().map(ResultTuple::to_json)], null])
            }
            ResultTuple::Group(group) => group.tuple_json(),
        }
    }

    /// Reads a result tuple.
    pub fn from_json(value: &Value) -> Result<ResultTuple, String> {
        let pair = value
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("a result tuple is a pair, got {value}"))?;
        let head = pair[0]
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("a result tuple starts with [id, parent], got {}", pair[0]))?;
        let id = head[0]
            .as_str()
            .ok_or_else(|| format!("a result id is a string, got {}", head[0]))?
            .to_string();
        let parent = match &head[1] {
            Value::Null => None,
            other => Some(Box::new(ResultTuple::from_json(other)?)),
        };
        match &pair[1] {
            Value::Null => Ok(ResultTuple::Task { id, parent }),
            Value::Array(members) => Ok(ResultTuple::Group(SavedGroup {
                id,
                parent,
                members: members
                    .iter()
                    .map(ResultTuple::from_json)
                    .collect::<Result<_, _>>()?,
            })),
            other => Err(format!(
                "a result tuple ends with null or a member list, got {other}"
            )),
        }
    }
}

/// A group result as `GroupResult.save()` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedGroup {
    /// Group id.
    pub id: String,
    /// The parent's result tuple, if any.
    pub parent: Option<Box<ResultTuple>>,
    /// The members' result tuples, in group order.
    pub members: Vec<ResultTuple>,
}

impl SavedGroup {
    /// A group `id` of plain tasks, in order.
    pub fn of_tasks<I, S>(id: impl Into<String>, task_ids: I) -> SavedGroup
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SavedGroup {
            id: id.into(),
            parent: None,
            members: task_ids.into_iter().map(ResultTuple::task).collect(),
        }
    }

    /// The members' ids, in order.
    pub fn member_ids(&self) -> Vec<&str> {
        self.members.iter().map(ResultTuple::id).collect()
    }

    fn tuple_json(&self) -> Value {
        json!([
            [&self.id, self.parent.as_deref().map(ResultTuple::to_json)],
            self.members
                .iter()
                .map(ResultTuple::to_json)
                .collect::<Vec<_>>()
        ])
    }

    /// The stored value, `{"result": <tuple>}`, as Celery's JSON serializer writes it
    /// (`json.dumps` spacing: `", "` and `": "`).
    pub fn to_stored(&self) -> Vec<u8> {
        let value = json!({ "result": self.tuple_json() });
        python_json(&value).into_bytes()
    }

    /// Reads a stored value (any JSON spacing).
    pub fn from_stored(bytes: &[u8]) -> Result<SavedGroup, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("a saved group is JSON ({e})"))?;
        let tuple = value
            .get("result")
            .ok_or_else(|| "a saved group is {\"result\": ...}".to_string())?;
        match ResultTuple::from_json(tuple)? {
            ResultTuple::Group(group) => Ok(group),
            ResultTuple::Task { id, .. } => Err(format!(
                "the saved result {id} is a task, not a group (its member list is null)"
            )),
        }
    }
}

/// JSON with Python's default `json.dumps` separators (`", "`, `": "`).
fn python_json(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md §7.4, "Saved GroupResult".
    const CAPTURED: &str = r#"{"result": [["c3c92a7b-8bb9-475d-aa02-36c5bf48971d", null], [[["5d11b560-6f3d-40e6-b175-d92345d2e12e", null], null], [["54a3a1db-9a85-4224-a9f8-7d6f33bdaf23", null], null]]]}"#;

    #[test]
    fn a_saved_group_is_byte_for_byte_celerys() {
        let group = SavedGroup::of_tasks(
            "c3c92a7b-8bb9-475d-aa02-36c5bf48971d",
            [
                "5d11b560-6f3d-40e6-b175-d92345d2e12e",
                "54a3a1db-9a85-4224-a9f8-7d6f33bdaf23",
            ],
        );
        assert_eq!(String::from_utf8_lossy(&group.to_stored()), CAPTURED);
        assert_eq!(
            SavedGroup::from_stored(CAPTURED.as_bytes()).expect("captured"),
            group
        );
    }

    #[test]
    fn nested_groups_and_parents_round_trip() {
        let inner = SavedGroup::of_tasks("inner", ["a", "b"]);
        let group = SavedGroup {
            id: "outer".into(),
            parent: Some(Box::new(ResultTuple::task("p"))),
            members: vec![
                ResultTuple::Task {
                    id: "c".into(),
                    parent: Some(Box::new(ResultTuple::task("c0"))),
                },
                ResultTuple::Group(inner),
            ],
        };
        let stored = group.to_stored();
        assert_eq!(
            String::from_utf8_lossy(&stored),
            r#"{"result": [["outer", [["p", null], null]], [[["c", [["c0", null], null]], null], [["inner", null], [[["a", null], null], [["b", null], null]]]]]}"#
        );
        assert_eq!(SavedGroup::from_stored(&stored).expect("round trip"), group);
        assert_eq!(group.member_ids(), vec!["c", "inner"]);
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "not json",
            "{}",
            r#"{"result": [["t", null], null]}"#,
            r#"{"result": [["g", null], 5]}"#,
            r#"{"result": [[1, null], []]}"#,
            r#"{"result": ["g"]}"#,
        ] {
            assert!(SavedGroup::from_stored(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
