//! Signatures as values a worker can send: how a [`Signature`] found in a message's
//! embed (a chain step, a `link` callback, a `link_error` errback) becomes a send.
//!
//! Celery's `Signature.apply_async(args, kwargs, **options)` merges the call's
//! arguments into the signature's own (unless it is immutable) and passes
//! `options` to `apply_async`. The same rules here, so a workflow built by Python
//! continues on a celeriac worker exactly as it would on a Python one
//! (PROTOCOL.md §4).

use std::time::Duration;

use serde_json::Value;

use crate::message::{Embed, Signature};
use crate::options::SendOptions;
use crate::time::parse_iso;

impl Signature {
    /// Whether this is a plain task signature (not a group, chain or chord).
    pub fn is_plain(&self) -> bool {
        self.subtask_type.is_none()
    }

    /// The positional arguments of a call that passes `parent` as the parent's
    /// result: `[parent] + args`, or the signature's own when it is immutable.
    pub fn args_after(&self, parent: Option<&Value>) -> Vec<Value> {
        match parent {
            Some(value) if !self.immutable => {
                let mut args = Vec::with_capacity(self.args.len() + 1);
                args.push(value.clone());
                args.extend(self.args.iter().cloned());
                args
            }
            _ => self.args.clone(),
        }
    }

    /// The preassigned task id (`options.task_id`), if any.
    pub fn task_id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// The send options Celery's `apply_async(**options)` would use for this
    /// signature: task id, routing, priority, countdown/eta, expiry, time limits,
    /// group membership, `link` / `link_error` carried as the new message's
    /// callbacks / errbacks, and `chord` (a chord body the task reports to, as the
    /// last step of a chain in a chord header). Options celeriac does not know are
    /// ignored.
    pub fn send_options(&self) -> SendOptions {
        let o = &self.options;
        let mut options = SendOptions::new();
        options.task_id = string(o.get("task_id"));
        options.queue = o.get("queue").and_then(kombu_name);
        options.routing_key = string(o.get("routing_key"));
        options.exchange = o.get("exchange").and_then(kombu_name);
        options.priority = o
            .get("priority")
            .and_then(Value::as_u64)
            .map(|p| p.min(255) as u8);
        options.countdown = o.get("countdown").and_then(seconds);
        options.eta = o.get("eta").and_then(Value::as_str).and_then(parse_iso);
        match o.get("expires") {
            Some(Value::String(at)) => options.expires_at = parse_iso(at),
            Some(other) => options.expires_in = seconds(other),
            None => {}
        }
        options.time_limit = o.get("time_limit").and_then(seconds);
        options.soft_time_limit = o.get("soft_time_limit").and_then(seconds);
        options.ignore_result = o.get("ignore_result").and_then(Value::as_bool);
        options.shadow = string(o.get("shadow"));
        options.group_id = string(o.get("group_id"));
        options.group_index = o.get("group_index").and_then(Value::as_i64);
        options.parent_id = string(o.get("parent_id"));
        options.root_id = string(o.get("root_id"));
        if let Some(Value::Object(headers)) = o.get("headers") {
            options.headers = headers.clone();
        }
        let callbacks = signatures(o.get("link"));
        let errbacks = signatures(o.get("link_error"));
        // A chord body carried by the last step of a chain in a chord header.
        let chord = o
            .get("chord")
            .filter(|body| body.is_object())
            .and_then(|body| serde_json::from_value::<Signature>(body.clone()).ok());
        if !callbacks.is_empty() || !errbacks.is_empty() || chord.is_some() {
            options.embed = Some(Embed {
                callbacks: (!callbacks.is_empty()).then_some(callbacks),
                errbacks: (!errbacks.is_empty()).then_some(errbacks),
                chord,
                ..Embed::default()
            });
        }
        options
    }
}

/// Signatures from a `link` / `link_error` option: one signature or a list.
pub fn signatures(value: Option<&Value>) -> Vec<Signature> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| serde_json::from_value(item.clone()).ok())
            .collect(),
        Some(item @ Value::Object(_)) => serde_json::from_value(item.clone())
            .map(|sig| vec![sig])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The member signatures of a group signature (`kwargs.tasks`).
pub fn group_members(group: &Signature) -> Vec<Signature> {
    signatures(group.kwargs.get("tasks"))
}

fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

/// A queue or exchange option: a name, or kombu's `Queue` / `Exchange` as a dict
/// with `name`.
fn kombu_name(value: &Value) -> Option<String> {
    match value {
        Value::String(name) => Some(name.clone()),
        Value::Object(fields) => string(fields.get("name")),
        _ => None,
    }
}

/// A duration in seconds, as Celery writes countdowns and limits.
fn seconds(value: &Value) -> Option<Duration> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(value: Value) -> Signature {
        serde_json::from_value(value).expect("signature")
    }

    #[test]
    fn parent_result_goes_first_unless_immutable() {
        let mutable = sig(json!({"task": "t.mul", "args": [10], "kwargs": {}, "options": {}}));
        assert_eq!(
            mutable.args_after(Some(&json!(3))),
            vec![json!(3), json!(10)]
        );
        let immutable = sig(json!({"task": "t.mul", "args": [10], "immutable": true}));
        assert_eq!(immutable.args_after(Some(&json!(3))), vec![json!(10)]);
        assert_eq!(mutable.args_after(None), vec![json!(10)]);
    }

    #[test]
    fn options_of_a_python_chain_step() {
        let step = sig(json!({
            "task": "tasks.mul", "args": [10], "kwargs": {},
            "options": {
                "task_id": "d0746212", "reply_to": "4e3c", "queue": "short-task",
                "countdown": 1.5, "priority": 7, "expires": 60,
                "link_error": {"task": "t.cleanup", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true},
                "link": [{"task": "t.notify", "args": [1], "kwargs": {}, "options": {}}]
            },
            "subtask_type": null, "immutable": false
        }));
        let options = step.send_options();
        assert_eq!(options.task_id.as_deref(), Some("d0746212"));
        assert_eq!(options.queue.as_deref(), Some("short-task"));
        assert_eq!(options.countdown, Some(Duration::from_millis(1500)));
        assert_eq!(options.priority, Some(7));
        assert_eq!(options.expires_in, Some(Duration::from_secs(60)));
        let embed = options.embed.expect("link options become the embed");
        assert_eq!(embed.errbacks.expect("errbacks")[0].task, "t.cleanup");
        assert_eq!(embed.callbacks.expect("callbacks")[0].args, vec![json!(1)]);
    }

    #[test]
    fn expires_as_a_date_and_queue_as_a_dict() {
        let step = sig(json!({
            "task": "t", "options": {"expires": "2030-01-01T00:00:00+00:00", "queue": {"name": "long-task"}}
        }));
        let options = step.send_options();
        assert!(options.expires_at.is_some());
        assert_eq!(options.queue.as_deref(), Some("long-task"));
    }

    #[test]
    fn group_members_are_read_from_kwargs() {
        let group = sig(json!({
            "task": "celery.group", "subtask_type": "group",
            "kwargs": {"tasks": [{"task": "a", "args": [1]}, {"task": "b", "args": [2]}]}
        }));
        let members = group_members(&group);
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].task, "b");
        assert!(!group.is_plain());
    }
}
