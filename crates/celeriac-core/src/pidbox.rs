//! kombu's pidbox, the remote-control mailbox (PROTOCOL.md §5.2, §7.7): requests
//! broadcast on the `<namespace>.pidbox` fanout exchange and replies sent to the
//! caller's queue `<oid>.reply.<namespace>.pidbox` through the direct exchange
//! `reply.<namespace>.pidbox`.
//!
//! A request body is `{"method", "arguments", "destination", "pattern", "matcher",
//! "ticket", "reply_to": {"exchange", "routing_key"}}` with headers `clock` and
//! `expires` (a Unix time, 0 = never); a reply body is `{<nodename>: <reply>}` with
//! headers `ticket` and `clock`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::message::{Envelope, Properties, CONTENT_TYPE_JSON};

/// Celery's default control namespace (`control_exchange`).
pub const DEFAULT_NAMESPACE: &str = "celery";

/// The request exchange of a namespace: `celery.pidbox`.
pub fn exchange(namespace: &str) -> String {
    format!("{namespace}.pidbox")
}

/// The reply exchange of a namespace: `reply.celery.pidbox`.
pub fn reply_exchange(namespace: &str) -> String {
    format!("reply.{namespace}.pidbox")
}

/// The queue a caller collects replies from: `<oid>.reply.celery.pidbox` (kombu's
/// `Mailbox.get_reply_queue`), bound to the reply exchange with routing key `oid`.
pub fn reply_queue(reply_exchange: &str, oid: &str) -> String {
    format!("{oid}.{reply_exchange}")
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The reply exchange (`reply.celery.pidbox`).
    pub exchange: String,
    /// The caller's id; its reply queue is bound with this key.
    pub routing_key: String,
}

/// A remote-control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Command name (`ping`, `revoke`, `active`, ...).
    pub method: String,
    /// Keyword arguments of the command.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub arguments: Map<String, Value>,
    /// Node names that should handle it; `None` = every node.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// Node-name pattern (with `matcher`), used when `destination` is empty.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `glob` or `pcre`, how `pattern` matches.
    #[serde(default)]
    pub matcher: Option<String>,
    /// Ticket replies carry (only when replies are wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where replies go (only when replies are wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

/// Errors reading a control message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidboxError {
    /// The body is not a request or reply as kombu sends them.
    #[error("malformed pidbox message: {0}")]
    Malformed(String),
}

impl ControlRequest {
    /// A request for `method` to every node, without replies.
    pub fn new(method: impl Into<String>, arguments: Map<String, Value>) -> ControlRequest {
        ControlRequest {
            method: method.into(),
            arguments,
            destination: None,
            pattern: None,
            matcher: None,
            ticket: None,
            reply_to: None,
        }
    }

    /// Reads a request from a received message (JSON body).
    pub fn from_envelope(envelope: &Envelope) -> Result<ControlRequest, PidboxError> {
        if envelope.content_type != CONTENT_TYPE_JSON {
            return Err(PidboxError::Malformed(format!(
                "content type {:?} (only JSON is accepted)",
                envelope.content_type
            )));
        }
        serde_json::from_slice(&envelope.body).map_err(|e| PidboxError::Malformed(e.to_string()))
    }

    /// Whether the node `hostname` handles this request (kombu's
    /// `Node.handle_message`): listed in `destination`, or matching `pattern` when
    /// there is no destination, or every node when neither is given.
    pub fn is_for(&self, hostname: &str) -> bool {
        match (&self.destination, &self.pattern, &self.matcher) {
            (Some(destination), _, _) if !destination.is_empty() => {
                destination.iter().any(|d| d == hostname)
            }
            (_, Some(pattern), Some(matcher)) => match matcher.as_str() {
                "glob" => glob_match(pattern, hostname),
                // pcre is not supported: a node never guesses it is meant.
                _ => false,
            },
            _ => true,
        }
    }

    /// The message Celery's `Mailbox._publish` sends: JSON body, headers `clock`
    /// and `expires` (Unix time, 0 = never), persistent delivery mode.
    pub fn to_envelope(&self, clock: u64, expires: f64) -> Envelope {
        let mut headers = Map::new();
        headers.insert("clock".into(), json!(clock));
        headers.insert("expires".into(), json!(expires));
        Envelope {
            headers: headers.into(),
            properties: Properties {
                delivery_mode: Some(2),
                ..Properties::default()
            },
            content_type: CONTENT_TYPE_JSON.to_string(),
            content_encoding: "utf-8".to_string(),
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

/// The `expires` header of a request (0 or absent = never).
pub fn request_expires(envelope: &Envelope) -> Option<f64> {
    envelope
        .headers
        .get("expires")
        .and_then(Value::as_f64)
        .filter(|at| *at > 0.0)
}

/// The `clock` header of a request or reply (0 when absent).
pub fn message_clock(envelope: &Envelope) -> u64 {
    envelope
        .headers
        .get("clock")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The reply of node `hostname` as kombu's `Mailbox._publish_reply` sends it: body
/// `{hostname: reply}`, headers `ticket` and `clock`, transient.
pub fn reply_envelope(hostname: &str, reply: Value, ticket: &str, clock: u64) -> Envelope {
    let mut headers = Map::new();
    headers.insert("ticket".into(), json!(ticket));
    headers.insert("clock".into(), json!(clock));
    let mut body = Map::new();
    body.insert(hostname.to_string(), reply);
    Envelope {
        headers: headers.into(),
        properties: Properties {
            delivery_mode: Some(1),
            ..Properties::default()
        },
        content_type: CONTENT_TYPE_JSON.to_string(),
        content_encoding: "utf-8".to_string(),
        body: serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
    }
}

/// A received reply: its ticket and the `{node: reply}` pairs of its body.
pub fn parse_reply(envelope: &Envelope) -> Result<(String, Map<String, Value>), PidboxError> {
    let ticket = envelope
        .headers
        .get("ticket")
        .and_then(Value::as_str)
        .ok_or_else(|| PidboxError::Malformed("reply without a ticket header".into()))?
        .to_string();
    match serde_json::from_slice(&envelope.body) {
        Ok(Value::Object(body)) => Ok((ticket, body)),
        Ok(other) => Err(PidboxError::Malformed(format!(
            "reply body is not an object: {other}"
        ))),
        Err(e) => Err(PidboxError::Malformed(e.to_string())),
    }
}

/// `{"ok": value}`, a successful reply.
pub fn ok(value: impl Into<Value>) -> Value {
    json!({ "ok": value.into() })
}

/// `{"error": message}`, a refused command.
pub fn error(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

/// Shell-style glob (`*`, `?`) over a whole node name.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_and_patterns_select_nodes() {
        let mut request = ControlRequest::new("ping", Map::new());
        assert!(request.is_for("w1@vm"));
        request.destination = Some(vec!["w2@vm".into()]);
        assert!(!request.is_for("w1@vm"));
        assert!(request.is_for("w2@vm"));
        request.destination = None;
        request.pattern = Some("w*@v?".into());
        request.matcher = Some("glob".into());
        assert!(request.is_for("w1@vm"));
        assert!(!request.is_for("x1@vm"));
        request.matcher = Some("pcre".into());
        assert!(!request.is_for("w1@vm"));
    }

    #[test]
    fn malformed_requests_are_errors() {
        let mut envelope = ControlRequest::new("ping", Map::new()).to_envelope(1, 0.0);
        envelope.body = b"[1, 2]".to_vec();
        assert!(ControlRequest::from_envelope(&envelope).is_err());
        envelope.body = b"{\"method\": 5}".to_vec();
        assert!(ControlRequest::from_envelope(&envelope).is_err());
        envelope.body = b"{\"method\": \"ping\", \"arguments\": null}".to_vec();
        let request = ControlRequest::from_envelope(&envelope).expect("null arguments are fine");
        assert!(request.arguments.is_empty());
    }
}
