//! Every lock key celeriac builds, in one place, and the header that carries a
//! unique-enqueue lock from the sender to the worker.
//!
//! | key | taken by | covers |
//! |---|---|---|
//! | `single:<task>` | the worker, around a run | one run at a time of the task |
//! | `single:<task>:<arg>=<json>,…` | the worker, around a run | one run at a time per argument values |
//! | `unique:<key>` | the sender, until the task ends | one queued-or-running task per key |
//! | `unique:<task>:<sha1>` | the sender (no explicit key) | one per task name and arguments |
//!
//! Argument values are written as compact JSON with object keys sorted, so the same
//! call gives the same key in every process and language. A single-instance key whose
//! argument part would exceed [`MAX_ARGS_LEN`] bytes uses the SHA-1 of that part
//! instead (`single:<task>:#<sha1>`).

use celeriac_core::task::LockKey;
use celeriac_core::{Map, Value};

/// Prefix of single-instance locks.
pub const SINGLE_PREFIX: &str = "single:";
/// Prefix of unique-enqueue locks.
pub const UNIQUE_PREFIX: &str = "unique:";
/// The message header naming the unique-enqueue lock of a task:
/// `{"key": "unique:…", "token": "…"}`. A worker that sees it releases the lock when
/// the task reaches a final outcome; workers that ignore it (Python's) leave the lock
/// to lapse at its TTL.
pub const UNIQUE_HEADER: &str = "celeriac_unique";
/// Longest argument part of a single-instance key before it is hashed.
pub const MAX_ARGS_LEN: usize = 200;

/// The single-instance lock key of a call of `task`.
pub fn single_instance(
    task: &str,
    key: &LockKey,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> String {
    let parts = match key {
        LockKey::Args(names) => names
            .iter()
            .map(|arg| {
                let value = arg.value(args, kwargs).unwrap_or(&Value::Null);
                format!("{}={}", arg.name, canonical_json(value))
            })
            .collect::<Vec<_>>(),
        // `LockKey::Task`, and any kind this version does not know: the task name.
        _ => Vec::new(),
    };
    if parts.is_empty() {
        return format!("{SINGLE_PREFIX}{task}");
    }
    let joined = parts.join(",");
    if joined.len() > MAX_ARGS_LEN {
        format!("{SINGLE_PREFIX}{task}:#{}", sha1_hex(joined.as_bytes()))
    } else {
        format!("{SINGLE_PREFIX}{task}:{joined}")
    }
}

/// The unique-enqueue lock key: `unique:<explicit>`, or `unique:<task>:<sha1>` of the
/// canonical JSON of `[args, kwargs]`.
pub fn unique(
    task: &str,
    explicit: Option<&str>,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> String {
    match explicit {
        Some(key) => format!("{UNIQUE_PREFIX}{key}"),
        None => {
            let call = Value::Array(vec![
                Value::Array(args.to_vec()),
                Value::Object(kwargs.clone()),
            ]);
            format!(
                "{UNIQUE_PREFIX}{task}:{}",
                sha1_hex(canonical_json(&call).as_bytes())
            )
        }
    }
}

/// The value of [`UNIQUE_HEADER`] for a lock `key` held with `token`.
pub fn unique_header(key: &str, token: &str) -> Value {
    let mut map = Map::new();
    map.insert("key".into(), Value::String(key.into()));
    map.insert("token".into(), Value::String(token.into()));
    Value::Object(map)
}

/// Reads a [`UNIQUE_HEADER`] value: `(key, token)`, or `None` if it is malformed.
pub fn parse_unique_header(value: &Value) -> Option<(String, String)> {
    let key = value.get("key")?.as_str()?;
    let token = value.get("token")?.as_str()?;
    (key.starts_with(UNIQUE_PREFIX) && !token.is_empty())
        .then(|| (key.to_string(), token.to_string()))
}

/// Compact JSON with object keys sorted at every level.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::task::KeyArg;
    use serde_json::json;

    fn kwargs(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn single_instance_keys_name_the_task_and_argument_values() {
        assert_eq!(
            single_instance("billing.run", &LockKey::Task, &[json!(1)], &Map::new()),
            "single:billing.run"
        );
        let per_customer = LockKey::Args(vec![
            KeyArg::new("customer_id", Some(0)),
            KeyArg::new("region", Some(1)),
        ]);
        let positional = single_instance(
            "billing.charge",
            &per_customer,
            &[json!(42), json!("eu")],
            &Map::new(),
        );
        assert_eq!(
            positional,
            r#"single:billing.charge:customer_id=42,region="eu""#
        );
        let by_keyword = single_instance(
            "billing.charge",
            &per_customer,
            &[],
            &kwargs(json!({"region": "eu", "customer_id": 42})),
        );
        assert_eq!(by_keyword, positional, "keyword or positional: same key");
        let missing = single_instance("billing.charge", &per_customer, &[json!(7)], &Map::new());
        assert_eq!(missing, "single:billing.charge:customer_id=7,region=null");
        let long = single_instance(
            "t",
            &LockKey::Args(vec![KeyArg::new("blob", Some(0))]),
            &[json!("x".repeat(500))],
            &Map::new(),
        );
        assert!(long.starts_with("single:t:#") && long.len() == "single:t:#".len() + 40);
    }

    #[test]
    fn unique_keys_hash_canonical_arguments() {
        let a = unique(
            "t",
            None,
            &[json!(1)],
            &kwargs(json!({"x": 1, "y": {"b": 2, "a": 1}})),
        );
        let b = unique(
            "t",
            None,
            &[json!(1)],
            &kwargs(json!({"y": {"a": 1, "b": 2}, "x": 1})),
        );
        assert_eq!(a, b, "keyword order does not matter");
        assert!(a.starts_with("unique:t:") && a.len() == "unique:t:".len() + 40);
        assert_ne!(a, unique("t", None, &[json!(2)], &Map::new()));
        assert_ne!(
            a,
            unique(
                "u",
                None,
                &[json!(1)],
                &kwargs(json!({"x": 1, "y": {"a": 1, "b": 2}}))
            )
        );
        assert_eq!(
            unique("t", Some("order-7"), &[], &Map::new()),
            "unique:order-7"
        );
    }

    #[test]
    fn unique_header_round_trips() {
        let header = unique_header("unique:k", "tok");
        assert_eq!(
            parse_unique_header(&header),
            Some(("unique:k".to_string(), "tok".to_string()))
        );
        assert_eq!(
            parse_unique_header(&json!({"key": "single:k", "token": "t"})),
            None
        );
        assert_eq!(parse_unique_header(&json!("unique:k")), None);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": null, "c": "é"}], "a": true})),
            r#"{"a":true,"b":[1,{"c":"é","d":null}]}"#
        );
    }
}
