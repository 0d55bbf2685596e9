//! What the Redis broker reads and writes beside the envelope codec: the envelope as
//! kombu publishes it, the `unacked` entry, the redelivered marks of a restore, the
//! message priority as kombu reads it, dead-letter records, and delivery tags.

use base64::Engine as _;
use celeriac_core::message::{DeliveryInfo, PropertyOverrides};
use celeriac_core::Envelope;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{DeadLetter, DeliveryTag, PRIOR_DELIVERIES_HEADER};

/// The list element for `envelope` published to `queue`, as kombu's `basic_publish`
/// writes it: a fresh uuid4 `delivery_tag`, `delivery_info` naming the anonymous
/// exchange with the queue as routing key (where a restore puts it back, kombu's or
/// ours), and an explicit priority (0 when unset). Returns the JSON and the priority.
pub(crate) fn publish_element(envelope: &Envelope, queue: &str) -> (Vec<u8>, i64) {
    let delivery_tag = uuid::Uuid::new_v4().to_string();
    let delivery_info = DeliveryInfo {
        exchange: String::new(),
        routing_key: queue.to_string(),
        redelivered: None,
    };
    let priority = envelope.properties.priority.unwrap_or(0);
    let overrides = PropertyOverrides {
        delivery_tag: Some(&delivery_tag),
        delivery_info: Some(&delivery_info),
        priority: Some(priority),
    };
    (envelope.to_kombu_json_with(&overrides), i64::from(priority))
}

/// An `unacked` value, `[envelope, exchange, routing_key]`, taken apart; the
/// envelope is kept verbatim.
pub(crate) struct UnackedEntry {
    pub envelope: Box<RawValue>,
    pub exchange: String,
    pub routing_key: String,
}

/// Reads an `unacked` value.
pub(crate) fn parse_unacked(value: &[u8]) -> Result<UnackedEntry, String> {
    let (envelope, exchange, routing_key): (Box<RawValue>, Value, Value) =
        serde_json::from_slice(value).map_err(|e| {
            format!("unreadable unacked entry (expected [envelope, exchange, routing_key]): {e}")
        })?;
    let text = |v: Value| match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(UnackedEntry {
        envelope,
        exchange: text(exchange),
        routing_key: text(routing_key),
    })
}

/// `properties.delivery_tag` of an envelope (for dead-letter records).
pub(crate) fn kombu_tag(envelope: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Tagged {
        properties: Option<TagOnly>,
    }
    #[derive(Deserialize)]
    struct TagOnly {
        delivery_tag: Option<String>,
    }
    serde_json::from_str::<Tagged>(envelope.get())
        .ok()?
        .properties?
        .delivery_tag
}

/// The exchange and routing key of an `unacked` value, without reading the envelope
/// (for counting held messages per queue).
pub(crate) fn unacked_route(value: &[u8]) -> Option<(String, String)> {
    let (_, exchange, routing_key): (serde::de::IgnoredAny, String, String) =
        serde_json::from_slice(value).ok()?;
    Some((exchange, routing_key))
}

/// What a restore writes in [`PRIOR_DELIVERIES_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PriorDeliveries {
    /// Leave it as it is (a kombu-style restore of a message held without a lease).
    Keep,
    /// The delivery that ends counts: the next one is one more.
    Counted,
    /// The delivery that ends is taken back (a release: as if never taken).
    TakenBack,
}

/// The envelope to put back in a queue, as kombu's `_do_restore_message` writes it:
/// `headers.redelivered = true` and `properties.delivery_info.redelivered = true`
/// (neither when the envelope has no `headers`, as kombu's `KeyError` skips both),
/// everything else kept, the delivery tag included. Unless `prior` is
/// [`PriorDeliveries::Keep`], the headers (created if missing) also record in
/// [`PRIOR_DELIVERIES_HEADER`] the deliveries the message has had, counting the held
/// one or not. Returns the JSON and the message's priority.
pub(crate) fn mark_redelivered(
    envelope: &RawValue,
    prior: PriorDeliveries,
) -> Result<(Vec<u8>, i64), String> {
    let mut value: Value =
        serde_json::from_str(envelope.get()).map_err(|e| format!("unreadable envelope: {e}"))?;
    let held_count = delivery_count_of(&value);
    let Value::Object(map) = &mut value else {
        return Err("the envelope is not a JSON object".into());
    };
    if let Some(Value::Object(headers)) = map.get_mut("headers") {
        headers.insert("redelivered".into(), Value::Bool(true));
        if let Some(Value::Object(info)) = map
            .get_mut("properties")
            .and_then(|p| p.get_mut("delivery_info"))
        {
            info.insert("redelivered".into(), Value::Bool(true));
        }
    }
    let before = match prior {
        PriorDeliveries::Keep => None,
        PriorDeliveries::Counted => Some(held_count),
        PriorDeliveries::TakenBack => Some(held_count.saturating_sub(1)),
    };
    if let Some(before) = before {
        let headers = map
            .entry("headers")
            .or_insert_with(|| Value::Object(Map::new()));
        if !headers.is_object() {
            *headers = Value::Object(Map::new());
        }
        if let Value::Object(headers) = headers {
            headers.insert(PRIOR_DELIVERIES_HEADER.into(), Value::from(before));
        }
    }
    let priority = message_priority(&value);
    let json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    Ok((json, priority))
}

/// How many times the message has been delivered, this delivery included:
/// [`PRIOR_DELIVERIES_HEADER`] + 1 when a celeriac restore recorded it, else 2 when
/// `properties.delivery_info.redelivered` is set (a kombu restore), else 1.
pub(crate) fn delivery_count(envelope: &Envelope) -> u32 {
    // Most envelopes never went back to a queue: look for the header in the
    // received text before building the header map.
    let recorded = match envelope.headers.json_text() {
        Some(text) if !text.get().contains(PRIOR_DELIVERIES_HEADER) => None,
        _ => envelope.headers.get(PRIOR_DELIVERIES_HEADER),
    };
    let redelivered = envelope
        .properties
        .delivery_info
        .as_ref()
        .and_then(|info| info.redelivered)
        == Some(true);
    count_from(recorded, redelivered)
}

/// [`delivery_count`] of an envelope read as JSON.
fn delivery_count_of(envelope: &Value) -> u32 {
    let recorded = envelope
        .get("headers")
        .and_then(|h| h.get(PRIOR_DELIVERIES_HEADER));
    let redelivered = envelope
        .get("properties")
        .and_then(|p| p.get("delivery_info"))
        .and_then(|i| i.get("redelivered"))
        == Some(&Value::Bool(true));
    count_from(recorded, redelivered)
}

fn count_from(recorded: Option<&Value>, redelivered: bool) -> u32 {
    match recorded.and_then(Value::as_u64) {
        Some(before) => u32::try_from(before).unwrap_or(u32::MAX).saturating_add(1),
        None if redelivered => 2,
        None => 1,
    }
}

/// `properties.priority` as kombu's `_get_message_priority` reads it: `int(...)` of a
/// number or numeric string, 0 otherwise (the caller clamps it to 0..=9).
pub(crate) fn message_priority(envelope: &Value) -> i64 {
    match envelope.get("properties").and_then(|p| p.get("priority")) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.trunc() as i64))
            .unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// One entry of `celeriac.dead_letters`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeadLetterRecord {
    pub id: String,
    pub queue: String,
    pub reason: String,
    /// Unix ms (`claim.lua` writes a Lua number, which a float reader must accept).
    #[serde(deserialize_with = "lenient_millis")]
    pub at: i64,
    /// The kombu delivery tag, when the message had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The payload, when it is UTF-8 text (an envelope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in base64, when it is not text (or written by `claim.lua`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

fn lenient_millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    Ok(number
        .as_i64()
        .or_else(|| number.as_f64().map(|f| f as i64))
        .unwrap_or_default())
}

impl DeadLetterRecord {
    /// A record of `payload` from `queue`, now.
    pub fn new(queue: &str, reason: &str, tag: Option<&str>, payload: &[u8]) -> DeadLetterRecord {
        let (payload, payload_base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        DeadLetterRecord {
            id: uuid::Uuid::new_v4().to_string(),
            queue: queue.to_string(),
            reason: reason.to_string(),
            at: chrono::Utc::now().timestamp_millis(),
            tag: tag.map(str::to_string),
            payload,
            payload_base64,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn into_dead_letter(self) -> DeadLetter {
        let payload = match (self.payload, self.payload_base64) {
            (Some(text), _) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .unwrap_or_else(|_| encoded.into_bytes()),
            (None, None) => Vec::new(),
        };
        DeadLetter {
            id: self.id,
            queue: self.queue,
            reason: self.reason,
            at: chrono::DateTime::from_timestamp_millis(self.at).unwrap_or_default(),
            payload,
        }
    }
}

/// The hold id of the `k`-th message (from 1) taken by claim number `claim`: the
/// key of its `unacked`, `unacked_index` and lease entries, and its delivery tag.
pub(crate) fn hold_id(claim: u64, k: u64) -> String {
    (claim * 1000 + k).to_string()
}

/// The delivery tag of the delivery held under `hold` (see [`hold_id`]).
pub(crate) fn delivery_tag(hold: String) -> DeliveryTag {
    DeliveryTag(hold)
}

/// The hold id of a tag made by [`delivery_tag`]: `None` for a tag this broker
/// never issued.
pub(crate) fn parse_delivery_tag(tag: &DeliveryTag) -> Option<&str> {
    let hold = tag.0.as_str();
    (!hold.is_empty() && hold.len() <= 20 && hold.bytes().all(|b| b.is_ascii_digit()))
        .then_some(hold)
}

/// A queue name as a JSON string (quotes included), as `claim.lua` writes it into
/// the `unacked` entries it makes.
pub(crate) fn quoted(queue: &str) -> String {
    serde_json::to_string(queue).unwrap_or_else(|_| format!("\"{queue}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_elements_look_like_kombu() {
        let envelope = celeriac_core::TaskMessage::new(
            "tasks.add",
            "id-1",
            vec![1.into(), 2.into()],
            Default::default(),
        )
        .encode();
        let (json, priority) = publish_element(&envelope, "short");
        assert_eq!(priority, 0);
        let value: Value = serde_json::from_slice(&json).expect("json");
        let properties = &value["properties"];
        assert_eq!(
            properties["delivery_info"],
            serde_json::json!({"exchange": "", "routing_key": "short"})
        );
        assert_eq!(properties["priority"], 0);
        assert_eq!(properties["body_encoding"], "base64");
        let tag = properties["delivery_tag"].as_str().expect("tag");
        assert_eq!(
            uuid::Uuid::parse_str(tag).map(|u| u.get_version_num()),
            Ok(4)
        );
    }

    #[test]
    fn restores_mark_both_redelivered_flags() {
        let raw = RawValue::from_string(
            r#"{"body":"e30=","headers":{"id":"x"},"properties":{"priority":"7","delivery_info":{"exchange":"","routing_key":"q"},"delivery_tag":"t"}}"#.into(),
        )
        .expect("raw");
        let (json, priority) = mark_redelivered(&raw, PriorDeliveries::Keep).expect("mark");
        assert_eq!(priority, 7);
        let value: Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(value["headers"]["redelivered"], true);
        assert_eq!(value["properties"]["delivery_info"]["redelivered"], true);
        assert_eq!(value["properties"]["delivery_tag"], "t");
        assert!(value["headers"].get(PRIOR_DELIVERIES_HEADER).is_none());

        let headless =
            RawValue::from_string(r#"{"body":"","properties":{"delivery_info":{}}}"#.into())
                .expect("raw");
        let (json, priority) = mark_redelivered(&headless, PriorDeliveries::Keep).expect("mark");
        assert_eq!(priority, 0);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json")["properties"]["delivery_info"],
            serde_json::json!({})
        );
    }

    #[test]
    fn unacked_entries_and_tags_parse() {
        let entry = parse_unacked(br#"[{"body": "x"}, "", "celery"]"#).expect("entry");
        assert_eq!(entry.envelope.get(), r#"{"body": "x"}"#);
        assert_eq!(
            (entry.exchange.as_str(), entry.routing_key.as_str()),
            ("", "celery")
        );
        assert!(parse_unacked(b"{}").is_err());
        assert_eq!(
            unacked_route(br#"[{"a": [1, {"b": 2}]}, "tasks", "short.x"]"#),
            Some(("tasks".into(), "short.x".into()))
        );

        let tag = delivery_tag(hold_id(42, 7));
        assert_eq!(tag.0, "42007");
        assert_eq!(parse_delivery_tag(&tag), Some("42007"));
        assert_eq!(parse_delivery_tag(&DeliveryTag("12:abc".into())), None);
        assert_eq!(parse_delivery_tag(&DeliveryTag("".into())), None);
        assert_eq!(quoted("a \"q\""), r#""a \"q\"""#);
    }

    #[test]
    fn restores_record_the_deliveries_so_far() {
        let first = r#"{"body":"e30=","headers":{"id":"x"},"properties":{"delivery_info":{"exchange":"","routing_key":"q"},"delivery_tag":"t"}}"#;
        let count = |json: &[u8]| {
            let envelope = Envelope::from_kombu_json(json).expect("envelope");
            delivery_count(&envelope)
        };
        assert_eq!(count(first.as_bytes()), 1);
        let raw = RawValue::from_string(first.into()).expect("raw");
        // Restored after its first delivery: the next is the second.
        let (once, _) = mark_redelivered(&raw, PriorDeliveries::Counted).expect("mark");
        assert_eq!(count(&once), 2);
        let value: Value = serde_json::from_slice(&once).expect("json");
        assert_eq!(value["headers"][PRIOR_DELIVERIES_HEADER], 1);
        // And again: the count goes on.
        let raw = RawValue::from_string(String::from_utf8(once).expect("utf-8")).expect("raw");
        let (twice, _) = mark_redelivered(&raw, PriorDeliveries::Counted).expect("mark");
        assert_eq!(count(&twice), 3);
        // A release takes the held delivery back.
        let raw = RawValue::from_string(String::from_utf8(twice).expect("utf-8")).expect("raw");
        let (released, _) = mark_redelivered(&raw, PriorDeliveries::TakenBack).expect("mark");
        assert_eq!(count(&released), 3);
        // A first delivery released counts as never delivered, redelivered flag or not.
        let raw = RawValue::from_string(first.into()).expect("raw");
        let (released, _) = mark_redelivered(&raw, PriorDeliveries::TakenBack).expect("mark");
        assert_eq!(count(&released), 1);
        // A kombu restore marks redelivered only: the second delivery.
        let raw = RawValue::from_string(first.into()).expect("raw");
        let (kombu, _) = mark_redelivered(&raw, PriorDeliveries::Keep).expect("mark");
        assert_eq!(count(&kombu), 2);
        // Headers are created when the envelope has none.
        let headless =
            RawValue::from_string(r#"{"body":"","properties":{"delivery_tag":"t"}}"#.into())
                .expect("raw");
        let (json, _) = mark_redelivered(&headless, PriorDeliveries::Counted).expect("mark");
        let value: Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(value["headers"][PRIOR_DELIVERIES_HEADER], 1);
        assert_eq!(kombu_tag(&headless).as_deref(), Some("t"));
    }

    #[test]
    fn dead_letter_records_keep_the_bytes() {
        let text = DeadLetterRecord::new("q", "why", Some("t"), b"{\"a\":1}");
        assert_eq!(text.payload.as_deref(), Some("{\"a\":1}"));
        let binary = DeadLetterRecord::new("q", "why", None, &[0xff, 0x00, 0x80]);
        let parsed: DeadLetterRecord =
            serde_json::from_slice(&binary.to_json()).expect("round trip");
        assert_eq!(parsed.into_dead_letter().payload, vec![0xff, 0x00, 0x80]);
        let from_lua: DeadLetterRecord = serde_json::from_str(
            r#"{"id":"x-1","queue":"q","reason":"r","at":1.795708916251e+12,"payload_base64":"AA=="}"#,
        )
        .expect("a record written by claim.lua");
        assert_eq!(from_lua.at, 1_795_708_916_251);
    }
}
