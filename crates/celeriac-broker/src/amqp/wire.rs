//! Task messages on AMQP 0-9-1 as kombu's py-amqp transport writes and reads them
//! (PROTOCOL.md §5): the body is the raw serialized bytes (no base64, no JSON
//! envelope), the protocol v2 headers are the AMQP application headers (a field
//! table), and `content_type`, `content_encoding`, `correlation_id`, `reply_to`,
//! `delivery_mode`, `priority` and `expiration` are AMQP basic properties.
//!
//! celeriac adds headers of its own only to copies it republishes itself (a
//! requeue to the back of a queue, a dead letter); they all start with
//! `x-celeriac-` and are removed again when the message is read.

use celeriac_core::message::DeliveryInfo;
use celeriac_core::{Envelope, Map, Value};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

pub(crate) use crate::PRIOR_DELIVERIES_HEADER;
/// Why a dead letter was dead-lettered.
pub(crate) const DEAD_LETTER_REASON_HEADER: &str = "x-celeriac-dead-letter-reason";
/// The queue a dead letter came from.
pub(crate) const DEAD_LETTER_QUEUE_HEADER: &str = "x-celeriac-dead-letter-queue";
/// When a message was dead-lettered (RFC 3339).
pub(crate) const DEAD_LETTER_AT_HEADER: &str = "x-celeriac-dead-lettered-at";
/// `"raw"` when a dead letter's body is the undecodable bytes that arrived, not a
/// kombu message.
pub(crate) const DEAD_LETTER_KIND_HEADER: &str = "x-celeriac-dead-letter-kind";
/// Prefix of every header celeriac adds.
const OWN_HEADER_PREFIX: &str = "x-celeriac-";

/// A JSON value as an AMQP field value, as py-amqp encodes Python values: strings
/// as long strings, integers as 32-bit when they fit (64-bit otherwise), floats as
/// doubles, `null` as void, lists as arrays, objects as tables.
pub(crate) fn json_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)),
    }
}

/// A JSON object as an AMQP field table (keys longer than 255 bytes are dropped:
/// AMQP cannot carry them).
pub(crate) fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        if let Ok(key) = ShortString::try_new(key.as_str()) {
            table.insert(key, json_to_amqp(value));
        }
    }
    table
}

/// An AMQP field value as JSON (strings that are not UTF-8 are decoded lossily).
pub(crate) fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).as_ref()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(table) => Value::Object(table_to_json(table)),
        AMQPValue::ByteArray(bytes) => {
            Value::from(String::from_utf8_lossy(bytes.as_slice()).as_ref())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP field table as a JSON object.
pub(crate) fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_string(), amqp_to_json(value)))
        .collect()
}

/// The AMQP properties of an envelope, as kombu's py-amqp transport publishes a
/// task: persistent (`delivery_mode` 2) unless the envelope says otherwise.
pub(crate) fn properties_of(
    envelope: &Envelope,
    extra_headers: &[(&str, Value)],
) -> BasicProperties {
    let mut headers = json_to_table(&envelope.headers);
    for (key, value) in extra_headers {
        headers.insert(ShortString::from(*key), json_to_amqp(value));
    }
    let p = &envelope.properties;
    let mut properties = BasicProperties::default()
        .with_content_type(ShortString::from(envelope.content_type.as_str()))
        .with_content_encoding(ShortString::from(envelope.content_encoding.as_str()))
        .with_headers(headers)
        .with_delivery_mode(p.delivery_mode.unwrap_or(2));
    if let Some(priority) = p.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(id) = p.correlation_id.as_deref() {
        properties = properties.with_correlation_id(ShortString::from(id));
    }
    if let Some(reply_to) = p.reply_to.as_deref().filter(|r| !r.is_empty()) {
        properties = properties.with_reply_to(ShortString::from(reply_to));
    }
    if let Some(expiration) = p.expiration.as_deref().filter(|e| !e.is_empty()) {
        properties = properties.with_expiration(ShortString::from(expiration));
    }
    properties
}

/// A message as it arrived from RabbitMQ (a consumer delivery or a `basic.get`).
pub(crate) struct Arrived<'a> {
    /// Exchange it was published to.
    pub exchange: &'a str,
    /// Routing key it was published with.
    pub routing_key: &'a str,
    /// Whether RabbitMQ delivered it before.
    pub redelivered: bool,
    /// Its properties.
    pub properties: &'a BasicProperties,
    /// Its body.
    pub body: &'a [u8],
}

impl<'a> Arrived<'a> {
    /// A consumer's delivery as it arrived.
    pub(crate) fn of(delivery: &'a lapin::message::Delivery) -> Arrived<'a> {
        Arrived {
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            redelivered: delivery.redelivered,
            properties: &delivery.properties,
            body: &delivery.data,
        }
    }
}

/// The headers of an arrived message as JSON, celeriac's own included.
pub(crate) fn all_headers(properties: &BasicProperties) -> Map<String, Value> {
    properties
        .headers()
        .as_ref()
        .map(table_to_json)
        .unwrap_or_default()
}

/// Reads an arrived message as an envelope. A message without a content type, or
/// one that says it is JSON but whose body is not, is not a kombu message: the
/// error says why (the caller dead-letters it).
pub(crate) fn envelope_of(arrived: &Arrived<'_>) -> Result<Envelope, String> {
    let props = arrived.properties;
    let content_type = props
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    if content_type.is_empty() {
        return Err("the message has no content_type: not a kombu message".into());
    }
    if content_type == "application/json"
        && serde_json::from_slice::<serde::de::IgnoredAny>(arrived.body).is_err()
    {
        return Err("the message says it is application/json but its body is not JSON".into());
    }
    let mut headers = all_headers(props);
    headers.retain(|key, _| !key.starts_with(OWN_HEADER_PREFIX));
    let content_encoding = props
        .content_encoding()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_else(|| {
            if content_type.contains("json") || content_type.starts_with("text/") {
                "utf-8".into()
            } else {
                "binary".into()
            }
        });
    let mut envelope = Envelope {
        headers: headers.into(),
        properties: Default::default(),
        content_type,
        content_encoding,
        body: arrived.body.to_vec(),
    };
    let p = &mut envelope.properties;
    p.correlation_id = props.correlation_id().as_ref().map(|s| s.to_string());
    p.reply_to = props.reply_to().as_ref().map(|s| s.to_string());
    p.delivery_mode = *props.delivery_mode();
    p.priority = *props.priority();
    p.expiration = props.expiration().as_ref().map(|s| s.to_string());
    p.delivery_info = Some(DeliveryInfo {
        exchange: arrived.exchange.to_string(),
        routing_key: arrived.routing_key.to_string(),
        redelivered: Some(arrived.redelivered),
    });
    Ok(envelope)
}

/// How many times a message has been delivered, this delivery included: the
/// deliveries before celeriac last republished it, plus RabbitMQ's own count of
/// this copy (a quorum queue's `x-delivery-count`; on classic queues only the
/// `redelivered` flag, which counts as one earlier delivery).
pub(crate) fn delivery_count(arrived: &Arrived<'_>) -> u32 {
    let headers = arrived.properties.headers().as_ref();
    let number = |key: &str| -> Option<u32> {
        let value = headers?.inner().get(key)?;
        amqp_to_json(value)
            .as_u64()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let prior = number(PRIOR_DELIVERIES_HEADER).unwrap_or(0);
    let this_copy = number("x-delivery-count").unwrap_or(u32::from(arrived.redelivered));
    prior.saturating_add(this_copy).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_a_field_table() {
        let headers: Map<String, Value> = serde_json::from_str(
            r#"{"task": "tasks.add", "id": "x", "retries": 0, "eta": null,
                "timelimit": [null, 30.5], "big": 5000000000, "flag": true,
                "stamps": {"a": ["b"]}}"#,
        )
        .expect("JSON");
        let table = json_to_table(&headers);
        assert!(matches!(
            table.inner().get("retries"),
            Some(AMQPValue::LongInt(0))
        ));
        assert!(matches!(
            table.inner().get("big"),
            Some(AMQPValue::LongLongInt(5_000_000_000))
        ));
        assert_eq!(table_to_json(&table), headers);
    }

    #[test]
    fn a_task_envelope_survives_properties_and_back() {
        let envelope =
            celeriac_core::TaskMessage::new("tasks.add", "id-1", vec![Value::from(2)], Map::new())
                .encode();
        let properties = properties_of(&envelope, &[]);
        assert_eq!(*properties.delivery_mode(), Some(2));
        let arrived = Arrived {
            exchange: "",
            routing_key: "celery",
            redelivered: false,
            properties: &properties,
            body: &envelope.body,
        };
        let back = envelope_of(&arrived).expect("decodes");
        assert_eq!(back.headers, envelope.headers);
        assert_eq!(back.body, envelope.body);
        assert_eq!(back.task_id_hint(), Some("id-1"));
        assert_eq!(delivery_count(&arrived), 1);
    }

    #[test]
    fn republished_and_redelivered_copies_count_their_deliveries() {
        let envelope = celeriac_core::TaskMessage::new("t", "i", vec![], Map::new()).encode();
        let properties = properties_of(&envelope, &[(PRIOR_DELIVERIES_HEADER, Value::from(2))]);
        let arrived = Arrived {
            exchange: "",
            routing_key: "q",
            redelivered: true,
            properties: &properties,
            body: &envelope.body,
        };
        assert_eq!(delivery_count(&arrived), 4);
        let back = envelope_of(&arrived).expect("decodes");
        assert!(!back.headers.contains_key(PRIOR_DELIVERIES_HEADER));
    }

    #[test]
    fn bodies_that_are_not_kombu_messages_are_refused() {
        let untyped = BasicProperties::default();
        let json = BasicProperties::default().with_content_type("application/json".into());
        for (properties, body) in [(&untyped, &b"{}"[..]), (&json, &b"{nope"[..])] {
            let arrived = Arrived {
                exchange: "",
                routing_key: "q",
                redelivered: false,
                properties,
                body,
            };
            assert!(envelope_of(&arrived).is_err());
        }
    }
}
