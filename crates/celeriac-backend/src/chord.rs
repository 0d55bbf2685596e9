//! Chord bookkeeping: counting a chord's header results and electing exactly one
//! caller to dispatch its body (PROTOCOL.md §3.5).
//!
//! On Redis this is Celery 5.7's algorithm on Celery's keys, so Python and celeriac
//! workers running header tasks of the same chord count together: each finished
//! header task adds its part once (a redelivered copy counts once), the call that
//! completes the count takes a short dispatch claim, publishes the body, then
//! cleans up and leaves a `done` marker so late duplicates do nothing.

use celeriac_core::TaskState;
use serde_json::Value;

/// A chord header task's outcome, reported by the worker that ran it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChordPart {
    /// The chord's group id (the header tasks' `group` header).
    pub group_id: String,
    /// The header task's id.
    pub task_id: String,
    /// Its position in the header (`group_index`); `None` sorts last.
    pub group_index: Option<i64>,
    /// Its final state (SUCCESS, FAILURE, REVOKED, ...).
    pub state: TaskState,
    /// Its return value, or its exception dict when it failed.
    pub result: Value,
}

impl ChordPart {
    /// A part of chord `group_id`.
    pub fn new(
        group_id: impl Into<String>,
        task_id: impl Into<String>,
        group_index: Option<i64>,
        state: TaskState,
        result: Value,
    ) -> ChordPart {
        ChordPart {
            group_id: group_id.into(),
            task_id: task_id.into(),
            group_index,
            state,
            result,
        }
    }
}

/// One recorded header result, as the dispatcher reads them back in header order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPartResult {
    /// The header task's id.
    pub task_id: String,
    /// Its final state.
    pub state: TaskState,
    /// Its return value or exception dict.
    pub result: Value,
}

/// What [`crate::ResultBackend::chord_part_return`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ChordProgress {
    /// Not every header task has reported yet (or no chord size is known).
    Pending {
        /// Parts recorded so far.
        ready: u64,
    },
    /// This call completed the chord and holds the dispatch claim: the caller
    /// publishes the body (or fails it), then calls
    /// [`crate::ResultBackend::chord_finish`] with `claim`.
    Complete {
        /// The dispatch claim token.
        claim: String,
        /// Every header result, in header order.
        parts: Vec<ChordPartResult>,
    },
    /// The chord was already dispatched or another caller holds the claim; nothing
    /// to do.
    Done,
}

/// Decodes Celery's encoded chord part `[1, task_id, state, result]`.
pub fn decode_part(raw: &[u8]) -> Option<ChordPartResult> {
    let value: Value = serde_json::from_slice(raw).ok()?;
    let items = value.as_array()?;
    let task_id = items.get(1)?.as_str()?.to_string();
    let state = TaskState::parse(items.get(2)?.as_str()?);
    let result = items.get(3).cloned().unwrap_or(Value::Null);
    Some(ChordPartResult {
        task_id,
        state,
        result,
    })
}

/// Encodes a part as Celery does: `[1, task_id, state, result]`.
pub fn encode_part(part: &ChordPart) -> String {
    serde_json::json!([1, part.task_id, part.state.as_str(), part.result]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_round_trip_in_celery_encoding() {
        let part = ChordPart::new("g", "t-1", Some(0), TaskState::Success, json!(6));
        let encoded = encode_part(&part);
        assert_eq!(encoded, r#"[1,"t-1","SUCCESS",6]"#);
        // Python writes spaces after separators; both decode.
        let python = br#"[1, "t-1", "SUCCESS", 6]"#;
        for raw in [encoded.as_bytes(), python.as_slice()] {
            let decoded = decode_part(raw).expect("decodes");
            assert_eq!(decoded.task_id, "t-1");
            assert_eq!(decoded.state, TaskState::Success);
            assert_eq!(decoded.result, json!(6));
        }
        assert!(decode_part(b"[1, 2]").is_none());
    }
}
