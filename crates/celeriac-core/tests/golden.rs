//! Golden wire tests: messages and result values captured from Python Celery 5.7 /
//! kombu 5.7 on Redis (PROTOCOL.md §7), stored verbatim under `tests/golden/`.
//!
//! Every task message must decode to the values visible in the capture and encode back
//! to the same headers, body and properties; every result meta must read and write back
//! to the same JSON. See `tests/golden/README.md` for where each fixture comes from.

use base64::Engine;
use celeriac_core::message::{DecodeError, Envelope, Properties, Signature, TaskMessage};
use celeriac_core::result::{ExceptionInfo, TaskMeta};
use celeriac_core::state::TaskState;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

const REPLY_TO: &str = "4e3c3eeb-5dc8-3b57-b7f0-2b4f9af432a5";
const CHAIN_FIRST_ID: &str = "3a62c89d-7057-4dff-bdff-41e17b7ac66c";
const CHAIN_SECOND_ID: &str = "d0746212-f1ed-4988-9413-ebf50ebf2358";
const GROUP_ID: &str = "0460e9e0-2735-4739-9a81-6244f347a9c9";
const CHORD_GROUP_ID: &str = "1ee95526-aaf5-4553-ac01-421bd51a30f4";
const CHORD_BODY_ID: &str = "c5d0a215-ec52-4b5c-84fb-e8e0b85e58ad";
const CHORD_LAST_HEADER_ID: &str = "29103872-cc4c-49a0-87d1-5337945a6628";

// ---------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name))
        .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn keys(map: &Map<String, Value>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

/// The embed of a message without continuations, as Python always sends it.
fn empty_embed() -> Value {
    json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null})
}

/// Checks everything that holds for every captured task envelope, and returns the
/// decoded message for the case-specific assertions.
///
/// `expected_body` is the decoded body exactly as PROTOCOL.md §7 shows it.
fn golden_task(name: &str, raw: &Value, expected_body: &Value) -> TaskMessage {
    let bytes = serde_json::to_vec(raw).expect("serialize fixture");
    let envelope = Envelope::from_kombu_json(&bytes)
        .unwrap_or_else(|e| panic!("{name}: not a kombu envelope: {e}"));
    assert_eq!(envelope.content_type, "application/json", "{name}");
    assert_eq!(envelope.content_encoding, "utf-8", "{name}");

    // The body bytes are kombu's json.dumps output and decode to what PROTOCOL shows.
    let body: Value = serde_json::from_slice(&envelope.body).expect("body is JSON");
    assert_eq!(&body, expected_body, "{name}: decoded body");
    assert_eq!(
        raw["body"].as_str().expect("base64 body"),
        b64(&envelope.body),
        "{name}: base64 body"
    );

    // Envelope codec alone (no task decoding): kombu JSON in, identical kombu JSON out.
    let again: Value = serde_json::from_slice(&envelope.to_kombu_json()).expect("kombu json");
    assert_eq!(&again, raw, "{name}: envelope re-serialized");

    let message =
        TaskMessage::decode(&envelope).unwrap_or_else(|e| panic!("{name}: decode failed: {e}"));

    // Fields every capture shows the same way.
    let headers = raw["headers"].as_object().expect("headers object");
    assert_eq!(message.headers.lang.as_deref(), Some("py"), "{name}");
    assert_eq!(message.headers.task, headers["task"], "{name}");
    assert_eq!(message.headers.id, headers["id"], "{name}");
    assert_eq!(message.headers.shadow, None, "{name}");
    assert_eq!(
        message.headers.timelimit,
        [None, None],
        "{name}: timelimit [null, null]"
    );
    assert_eq!(message.headers.hard_time_limit(), None, "{name}");
    assert_eq!(message.headers.soft_time_limit(), None, "{name}");
    assert_eq!(message.headers.retries, 0, "{name}");
    assert_eq!(message.headers.replaced_task_nesting, Some(0), "{name}");
    assert_eq!(message.headers.stamped_headers, None, "{name}");
    assert_eq!(message.headers.stamps, Some(Map::new()), "{name}");
    assert_eq!(message.headers.kwargsrepr.as_deref(), Some("{}"), "{name}");
    assert!(
        message.headers.extra.is_empty(),
        "{name}: no unknown headers"
    );
    assert!(message.kwargs.is_empty(), "{name}");
    assert_eq!(
        message.properties.correlation_id.as_deref(),
        Some(message.headers.id.as_str()),
        "{name}"
    );
    assert_eq!(
        message.properties.reply_to.as_deref(),
        Some(REPLY_TO),
        "{name}"
    );
    assert_eq!(message.properties.delivery_mode, Some(2), "{name}");
    assert_eq!(
        message.properties.body_encoding.as_deref(),
        Some("base64"),
        "{name}"
    );
    assert_eq!(
        message.properties.delivery_tag.as_deref(),
        raw["properties"]["delivery_tag"].as_str(),
        "{name}"
    );
    let delivery = message
        .properties
        .delivery_info
        .as_ref()
        .expect("delivery_info");
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("", "celery"),
        "{name}"
    );
    assert_eq!(delivery.redelivered, None, "{name}");
    assert!(
        message.properties.extra.is_empty(),
        "{name}: no unknown properties"
    );

    // Encode: identical headers (values, key set and Celery's key order), identical
    // decoded body, identical properties.
    let encoded = message.encode();
    assert_eq!(
        Value::Object(encoded.headers.clone().into_map()),
        raw["headers"],
        "{name}: encoded headers"
    );
    assert_eq!(
        keys(&encoded.headers),
        keys(headers),
        "{name}: header order"
    );
    let encoded_body: Value = serde_json::from_slice(&encoded.body).expect("encoded body");
    assert_eq!(&encoded_body, expected_body, "{name}: encoded body");
    let embed = encoded_body[2].as_object().expect("embed object");
    assert_eq!(
        keys(embed),
        ["callbacks", "errbacks", "chain", "chord"],
        "{name}: embed keys"
    );
    assert_eq!(
        encoded.properties, envelope.properties,
        "{name}: properties"
    );
    assert_eq!(
        serde_json::to_value(&encoded.properties).expect("properties"),
        raw["properties"],
        "{name}: properties JSON"
    );
    assert_eq!(encoded.content_type, envelope.content_type, "{name}");
    assert_eq!(
        encoded.content_encoding, envelope.content_encoding,
        "{name}"
    );

    // Through the kombu JSON envelope and back.
    let wire = encoded.to_kombu_json();
    let reread = Envelope::from_kombu_json(&wire).expect("re-read kombu json");
    assert_eq!(
        reread, encoded,
        "{name}: kombu JSON round trip of the encoded envelope"
    );
    assert_eq!(
        TaskMessage::decode(&reread).expect("decode again"),
        message,
        "{name}: decode(encode(m)) == m"
    );
    let mut wire_value: Value = serde_json::from_slice(&wire).expect("wire json");
    let mut raw_rest = raw.clone();
    let wire_body = wire_value
        .as_object_mut()
        .and_then(|m| m.remove("body"))
        .expect("wire body");
    raw_rest.as_object_mut().and_then(|m| m.remove("body"));
    assert_eq!(
        wire_value, raw_rest,
        "{name}: envelope apart from the body bytes"
    );
    let wire_body = base64::engine::general_purpose::STANDARD
        .decode(wire_body.as_str().expect("base64 text"))
        .expect("base64");
    assert_eq!(
        serde_json::from_slice::<Value>(&wire_body).expect("json"),
        *expected_body,
        "{name}: wire body"
    );

    message
}

fn decode_fixture(name: &str) -> TaskMessage {
    let raw = fixture(name);
    let envelope =
        Envelope::from_kombu_json(&serde_json::to_vec(&raw).expect("json")).expect("envelope");
    TaskMessage::decode(&envelope).expect("decode")
}

// ---------------------------------------------------------------------------------------
// §7.1 task messages
// ---------------------------------------------------------------------------------------

#[test]
fn plain_send_task() {
    let raw = fixture("task_plain.json");
    let body = json!([[2, 3], {}, empty_embed()]);
    let m = golden_task("task_plain.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id, "plain-0001");
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert_eq!(m.headers.eta, None);
    assert_eq!(m.headers.expires, None);
    assert_eq!(m.headers.group, None);
    assert_eq!(m.headers.group_index, None);
    assert_eq!(m.headers.root_id.as_deref(), Some("plain-0001"));
    assert_eq!(m.headers.parent_id, None);
    assert_eq!(m.headers.argsrepr.as_deref(), Some("(2, 3)"));
    assert_eq!(m.headers.origin.as_deref(), Some("gen9210@vm"));
    // send_task passes ignore_result=None: null on the wire, and null again when encoded.
    assert_eq!(m.headers.ignore_result, None);
    assert_eq!(m.encode().headers["ignore_result"], Value::Null);
    assert_eq!(m.properties.priority, Some(0));
    assert_eq!(m.properties.expiration, None);
    assert_eq!(
        m.properties.delivery_tag.as_deref(),
        Some("53bdfb83-28b8-4f76-a5c4-78bf9110047f")
    );
    assert_eq!(m.embed, celeriac_core::Embed::default());
}

#[test]
fn countdown_expires_priority() {
    let raw = fixture("task_countdown_expires_priority.json");
    let body = json!([[4, 5], {}, empty_embed()]);
    let m = golden_task("task_countdown_expires_priority.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id, "opts-0002");
    assert_eq!(m.args, vec![json!(4), json!(5)]);
    let eta = instant("2026-11-26T17:01:44.120318Z");
    let expires = instant("2026-11-26T18:01:44.120318Z");
    assert_eq!(m.headers.eta, Some(eta));
    assert_eq!(m.headers.expires, Some(expires));
    assert_eq!(expires - eta, chrono::Duration::hours(1));
    // Encoded back in Python's isoformat: microseconds and `+00:00`.
    let encoded = m.encode();
    assert_eq!(encoded.headers["eta"], "2026-11-26T17:01:44.120318+00:00");
    assert_eq!(
        encoded.headers["expires"],
        "2026-11-26T18:01:44.120318+00:00"
    );
    assert_eq!(m.properties.priority, Some(7));
    assert_eq!(m.properties.expiration.as_deref(), Some("7200000"));
    assert_eq!(m.headers.ignore_result, Some(false));
    assert_eq!(encoded.headers["ignore_result"], Value::Bool(false));
    assert_eq!(m.headers.root_id.as_deref(), Some("opts-0002"));
    assert_eq!(m.headers.parent_id, None);
    assert_eq!(m.headers.argsrepr.as_deref(), Some("(4, 5)"));
}

fn mul_step() -> Value {
    json!({
        "task": "tasks.mul",
        "args": [10],
        "kwargs": {},
        "options": {"task_id": CHAIN_SECOND_ID, "reply_to": REPLY_TO},
        "subtask_type": null,
        "immutable": false
    })
}

#[test]
fn chain_first_message() {
    let raw = fixture("task_chain_first.json");
    let body = json!([[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": [mul_step()], "chord": null}]);
    let m = golden_task("task_chain_first.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id, CHAIN_FIRST_ID);
    assert_eq!(m.args, vec![json!(1), json!(2)]);
    assert_eq!(m.headers.root_id.as_deref(), Some(CHAIN_FIRST_ID));
    assert_eq!(m.headers.parent_id, None);
    assert_eq!(m.headers.ignore_result, Some(false));
    assert_eq!(m.headers.group, None);
    assert_eq!(m.embed.callbacks, None);
    assert_eq!(m.embed.errbacks, None);
    assert_eq!(m.embed.chord, None);

    // Remaining steps, reversed: the next step is the last element.
    let chain = m.embed.chain.as_ref().expect("embed.chain");
    assert_eq!(chain.len(), 1);
    let next = chain.last().expect("next step");
    let mut expected = Signature::new("tasks.mul", vec![json!(10)]);
    expected
        .options
        .insert("task_id".into(), json!(CHAIN_SECOND_ID));
    expected.options.insert("reply_to".into(), json!(REPLY_TO));
    assert_eq!(next, &expected);
    assert_eq!(next.options["task_id"], CHAIN_SECOND_ID);
    assert_eq!(next.subtask_type, None);
    assert!(!next.immutable);
    assert!(next.extra.is_empty());
}

#[test]
fn chain_second_message() {
    let raw = fixture("task_chain_second.json");
    let body =
        json!([[3, 10], {}, {"callbacks": null, "errbacks": null, "chain": [], "chord": null}]);
    let m = golden_task("task_chain_second.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.mul");
    assert_eq!(m.headers.id, CHAIN_SECOND_ID);
    assert_eq!(m.args, vec![json!(3), json!(10)]);
    assert_eq!(m.headers.root_id.as_deref(), Some(CHAIN_FIRST_ID));
    assert_eq!(m.headers.parent_id.as_deref(), Some(CHAIN_FIRST_ID));
    assert_eq!(m.headers.origin.as_deref(), Some("gen9354@vm"));
    assert_eq!(m.headers.argsrepr.as_deref(), Some("(3, 10)"));
    // The chain is exhausted: an empty list, not null, and it stays an empty list.
    assert_eq!(m.embed.chain, Some(vec![]));

    // It is what the first message's next step turns into: id preassigned in
    // options.task_id, parent result (3) prepended to the signature args.
    let first = decode_fixture("task_chain_first.json");
    let step = first
        .embed
        .chain
        .as_ref()
        .and_then(|c| c.last())
        .expect("next step");
    assert_eq!(step.options["task_id"], m.headers.id.as_str());
    assert_eq!(step.task, m.headers.task);
    let mut args = vec![json!(1 + 2)];
    args.extend(step.args.iter().cloned());
    assert_eq!(m.args, args);
    let remaining = first
        .embed
        .chain
        .as_ref()
        .map(|c| c[..c.len() - 1].to_vec());
    assert_eq!(m.embed.chain, remaining);
}

#[test]
fn group_member_0() {
    let raw = fixture("task_group_0.json");
    let body = json!([[1, 1], {}, empty_embed()]);
    let m = golden_task("task_group_0.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id, "b1f07dfa-f190-4e60-b4fb-bbaccaad401a");
    assert_eq!(m.args, vec![json!(1), json!(1)]);
    assert_eq!(m.headers.group.as_deref(), Some(GROUP_ID));
    assert_eq!(m.headers.group_index, Some(0));
    assert_eq!(
        m.headers.root_id.as_deref(),
        Some("b1f07dfa-f190-4e60-b4fb-bbaccaad401a")
    );
    assert_eq!(m.headers.parent_id, None);
    assert_eq!(m.embed, celeriac_core::Embed::default());
}

fn tsum_body_signature() -> Value {
    json!({
        "task": "tasks.tsum",
        "args": [],
        "kwargs": {},
        "options": {"task_id": CHORD_BODY_ID, "reply_to": REPLY_TO, "group_id": CHORD_GROUP_ID},
        "subtask_type": null,
        "immutable": false
    })
}

#[test]
fn chord_header_member_0() {
    let raw = fixture("task_chord_header_0.json");
    let body = json!([[3, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": tsum_body_signature()}]);
    let m = golden_task("task_chord_header_0.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id, "8baaa891-ac09-4590-9f27-b1a2fb890e11");
    assert_eq!(m.args, vec![json!(3), json!(3)]);
    assert_eq!(m.headers.group.as_deref(), Some(CHORD_GROUP_ID));
    assert_eq!(m.headers.group_index, Some(0));
    assert_eq!(m.headers.parent_id, None);
    assert_eq!(m.embed.chain, None);

    let chord = m.embed.chord.as_ref().expect("embed.chord");
    assert_eq!(chord.task, "tasks.tsum");
    assert!(chord.args.is_empty() && chord.kwargs.is_empty());
    assert_eq!(chord.options["task_id"], CHORD_BODY_ID);
    assert_eq!(chord.options["group_id"], CHORD_GROUP_ID);
    assert_eq!(
        chord.options["group_id"],
        m.headers.group.as_deref().unwrap_or_default()
    );
    assert_eq!(keys(&chord.options), ["task_id", "reply_to", "group_id"]);
    assert_eq!(chord.subtask_type, None);
    assert!(!chord.immutable);
}

#[test]
fn chord_body_message() {
    let raw = fixture("task_chord_body.json");
    let body = json!([[[6, 8]], {}, empty_embed()]);
    let m = golden_task("task_chord_body.json", &raw, &body);
    assert_eq!(m.headers.task, "tasks.tsum");
    assert_eq!(m.headers.id, CHORD_BODY_ID);
    assert_eq!(m.args, vec![json!([6, 8])]);
    assert_eq!(m.headers.group.as_deref(), Some(CHORD_GROUP_ID));
    assert_eq!(m.headers.group_index, None);
    assert_eq!(m.headers.root_id.as_deref(), Some(CHORD_LAST_HEADER_ID));
    assert_eq!(m.headers.parent_id.as_deref(), Some(CHORD_LAST_HEADER_ID));
    assert_eq!(m.headers.origin.as_deref(), Some("gen9355@vm"));
    assert_eq!(m.headers.argsrepr.as_deref(), Some("([6, 8],)"));

    // Published from the body signature the header members carry.
    let header = decode_fixture("task_chord_header_0.json");
    let signature = header.embed.chord.expect("embed.chord");
    assert_eq!(signature.options["task_id"], m.headers.id.as_str());
    assert_eq!(
        signature.options["group_id"],
        m.headers.group.as_deref().unwrap_or_default()
    );
    assert_eq!(signature.task, m.headers.task);
}

// ---------------------------------------------------------------------------------------
// §7.2 ack emulation
// ---------------------------------------------------------------------------------------

#[test]
fn unacked_entry_holds_the_envelope_as_published() {
    let raw = fixture("unacked_entry.json");
    let entry = raw["value (parsed)"]
        .as_array()
        .expect("[envelope, exchange, routing_key]");
    assert_eq!(entry.len(), 3);
    assert_eq!(entry[1], "");
    assert_eq!(entry[2], "celery");
    let body = json!([[4, 5], {}, empty_embed()]);
    let m = golden_task("unacked_entry.json[0]", &entry[0], &body);
    // The hash field is the delivery tag of the held message.
    assert_eq!(raw["field"].as_str(), m.properties.delivery_tag.as_deref());
    assert_eq!(m.headers.id, "opts-0002");
    assert_eq!(m.properties.priority, Some(7));
    // It is the published message, unchanged.
    assert_eq!(entry[0], fixture("task_countdown_expires_priority.json"));
    assert_eq!(m, decode_fixture("task_countdown_expires_priority.json"));

    let index = fixture("unacked_index.json");
    assert_eq!(index[0][0].as_str(), m.properties.delivery_tag.as_deref());
    assert!(
        index[0][1].as_f64().is_some_and(|t| t > 1.7e9),
        "delivery time in Unix seconds"
    );
}

/// PROTOCOL §7.2: the copy restored by visibility-timeout recovery differs only by
/// `headers.redelivered: true` and `properties.delivery_info.redelivered: true`.
#[test]
fn restored_copy_keeps_the_redelivered_flags() {
    let mut raw = fixture("unacked_entry.json")["value (parsed)"][0].clone();
    raw["headers"]["redelivered"] = json!(true);
    raw["properties"]["delivery_info"]["redelivered"] = json!(true);
    let envelope =
        Envelope::from_kombu_json(&serde_json::to_vec(&raw).expect("json")).expect("envelope");
    let m = TaskMessage::decode(&envelope).expect("decode");
    assert_eq!(m.headers.extra.get("redelivered"), Some(&json!(true)));
    assert_eq!(
        m.properties
            .delivery_info
            .as_ref()
            .and_then(|d| d.redelivered),
        Some(true)
    );
    let encoded = m.encode();
    assert_eq!(Value::Object(encoded.headers.into_map()), raw["headers"]);
    assert_eq!(
        serde_json::to_value(&encoded.properties).expect("json"),
        raw["properties"]
    );
}

// ---------------------------------------------------------------------------------------
// Refused messages (derived from the plain capture)
// ---------------------------------------------------------------------------------------

fn decode_value(raw: &Value) -> Result<TaskMessage, DecodeError> {
    let envelope = Envelope::from_kombu_json(&serde_json::to_vec(raw).expect("json"))?;
    TaskMessage::decode(&envelope)
}

#[test]
fn pickle_content_type_is_refused() {
    let mut raw = fixture("task_plain.json");
    raw["content-type"] = json!("application/x-python-serialize");
    raw["content-encoding"] = json!("binary");
    let err = decode_value(&raw).expect_err("pickle must be refused");
    assert!(
        matches!(err, DecodeError::RefusedContentType { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("pickle"), "{err}");
}

#[test]
fn protocol_v1_body_is_refused() {
    let mut raw = fixture("task_plain.json");
    raw["headers"] = json!({});
    let v1 = json!({"task": "tasks.add", "id": "plain-0001", "args": [2, 3], "kwargs": {}});
    raw["body"] = json!(b64(&serde_json::to_vec(&v1).expect("json")));
    let err = decode_value(&raw).expect_err("v1 must be refused");
    assert_eq!(
        err,
        DecodeError::ProtocolV1 {
            task: "tasks.add".into()
        }
    );
    assert!(err.to_string().contains("protocol v1"), "{err}");
}

#[test]
fn two_element_body_is_invalid() {
    let mut raw = fixture("task_plain.json");
    raw["body"] = json!(b64(b"[[2, 3], {}]"));
    let err = decode_value(&raw).expect_err("two elements");
    assert!(matches!(err, DecodeError::InvalidBody(_)), "{err:?}");
}

#[test]
fn non_base64_body_is_an_invalid_envelope() {
    let mut raw = fixture("task_plain.json");
    raw["body"] = json!("[[2, 3], {}, null] is not base64!");
    assert_eq!(raw["properties"]["body_encoding"], "base64");
    let err = Envelope::from_kombu_json(&serde_json::to_vec(&raw).expect("json"))
        .expect_err("not base64");
    assert!(matches!(err, DecodeError::InvalidEnvelope(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// §7.4 result backend values
// ---------------------------------------------------------------------------------------

/// Reads a result fixture into [`TaskMeta`] and checks it writes back to the same JSON.
fn golden_meta(name: &str) -> TaskMeta {
    let raw = fixture(name);
    let meta: TaskMeta = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{name}: not a task meta: {e}"));
    let written = serde_json::to_value(&meta).expect("serialize meta");
    assert_eq!(written, raw, "{name}: written back");
    assert_eq!(
        keys(written.as_object().expect("object")),
        keys(raw.as_object().expect("object")),
        "{name}: key order"
    );
    // And the bytes a celeriac backend stores read back to the same meta.
    let reread: TaskMeta =
        serde_json::from_slice(&serde_json::to_vec(&meta).expect("bytes")).expect("reread");
    assert_eq!(reread, meta, "{name}: meta round trip");
    meta
}

fn assert_no_extended(meta: &TaskMeta) {
    assert_eq!(meta.name, None);
    assert_eq!(meta.args, None);
    assert_eq!(meta.kwargs, None);
    assert_eq!(meta.worker, None);
    assert_eq!(meta.retries, None);
    assert_eq!(meta.queue, None);
}

#[test]
fn result_success() {
    let meta = golden_meta("result_success.json");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.result, json!(5));
    assert_eq!(meta.traceback, None);
    assert!(meta.children.is_empty());
    assert_eq!(
        meta.date_done.as_deref(),
        Some("2026-11-26T16:01:56.204318+00:00")
    );
    assert_eq!(meta.task_id, "plain-0001");
    assert_eq!(meta.group_id, None);
    assert_eq!(meta.parent_id, None);
    assert_eq!(meta.exception(), None);
    assert_no_extended(&meta);
}

#[test]
fn result_failure() {
    let meta = golden_meta("result_failure.json");
    assert_eq!(meta.status, TaskState::Failure);
    assert_eq!(meta.task_id, "boom-0004");
    let exc = meta.exception().expect("exception");
    assert_eq!(exc, ExceptionInfo::new("ValueError", "builtins", "kaboom"));
    assert_eq!(exc.message(), "kaboom");
    assert_eq!(exc.to_value(), meta.result);
    let traceback = meta.traceback.as_deref().expect("traceback");
    assert!(traceback.starts_with("Traceback (most recent call last):\n"));
    assert!(traceback.ends_with("ValueError: kaboom\n"));
    assert_eq!(
        meta.date_done.as_deref(),
        Some("2026-11-26T16:01:56.251737+00:00")
    );
}

#[test]
fn result_chain_parent() {
    let meta = golden_meta("result_chain_parent.json");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.result, json!(3));
    assert_eq!(meta.task_id, CHAIN_FIRST_ID);
    assert_eq!(meta.children, vec![json!([[CHAIN_SECOND_ID, null], null])]);
}

#[test]
fn result_chord_body() {
    let meta = golden_meta("result_chord_body.json");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.result, json!(14));
    assert_eq!(meta.task_id, CHORD_BODY_ID);
    assert_eq!(meta.group_id.as_deref(), Some(CHORD_GROUP_ID));
    assert_eq!(meta.parent_id.as_deref(), Some(CHORD_LAST_HEADER_ID));
    assert_no_extended(&meta);
}

#[test]
fn result_started() {
    let meta = golden_meta("result_started.json");
    assert_eq!(meta.status, TaskState::Started);
    assert_eq!(meta.result, json!({"pid": 10429, "hostname": "w2@vm"}));
    assert_eq!(meta.date_done, None);
    assert_eq!(meta.exception(), None);
    assert!(!meta.status.is_ready());
}

#[test]
fn result_retry() {
    let meta = golden_meta("result_retry.json");
    assert_eq!(meta.status, TaskState::Retry);
    assert_eq!(meta.task_id, "flaky-0006");
    assert_eq!(
        meta.exception(),
        Some(ExceptionInfo::new("RuntimeError", "builtins", "try again"))
    );
    assert_eq!(meta.date_done, None);
    assert!(!meta.status.is_ready());
    // The retry re-sent the same id: it lists itself as a child.
    assert_eq!(meta.children, vec![json!([["flaky-0006", null], null])]);
    assert!(meta
        .traceback
        .as_deref()
        .is_some_and(|t| t.ends_with("<truncated>")));
}

#[test]
fn result_revoked_expired() {
    let meta = golden_meta("result_revoked_expired.json");
    assert_eq!(meta.status, TaskState::Revoked);
    assert_eq!(meta.task_id, "expired-0010");
    assert_eq!(meta.exception(), Some(ExceptionInfo::revoked("expired")));
    assert_eq!(meta.result, ExceptionInfo::revoked("expired").to_value());
    assert_eq!(meta.traceback, None);
    assert_eq!(
        meta.date_done.as_deref(),
        Some("2026-11-26T16:03:10.844677+00:00")
    );
}

#[test]
fn result_revoked_control() {
    let meta = golden_meta("result_revoked_control.json");
    assert_eq!(meta.status, TaskState::Revoked);
    assert_eq!(meta.task_id, "revoke-me-0013");
    assert_eq!(meta.exception(), Some(ExceptionInfo::revoked("revoked")));
    assert_eq!(meta.result, ExceptionInfo::revoked("revoked").to_value());
}

#[test]
fn result_not_registered_extended() {
    let meta = golden_meta("result_not_registered_extended.json");
    assert_eq!(meta.status, TaskState::Failure);
    assert_eq!(meta.task_id, "unknown-task");
    assert_eq!(
        meta.exception(),
        Some(ExceptionInfo::not_registered("tasks.nope"))
    );
    assert_eq!(
        meta.result,
        ExceptionInfo::not_registered("tasks.nope").to_value()
    );
    assert_eq!(meta.traceback, None);
    // result_extended=True, but the request could not be read: all six keys are
    // written, all null.
    assert_eq!(meta.name, None);
    assert_eq!(meta.worker, None);
    assert_eq!(meta.retries, None);
    assert_eq!(meta.queue, None);
    assert!(meta.args.as_ref().is_some_and(Value::is_null));
    assert!(meta.kwargs.as_ref().is_some_and(Value::is_null));
}

#[test]
fn result_extended_success() {
    let meta = golden_meta("result_extended_success.json");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.result, json!(11));
    assert_eq!(meta.task_id, "kw");
    assert_eq!(meta.name.as_deref(), Some("tasks.add"));
    assert_eq!(meta.args, Some(json!([])));
    assert_eq!(meta.kwargs, Some(json!({"x": 5, "y": 6})));
    assert_eq!(meta.worker.as_deref(), Some("w3@vm"));
    assert_eq!(meta.retries, Some(0));
    assert_eq!(meta.queue.as_deref(), Some("celery"));
}

#[test]
fn result_chord_body_failed() {
    let meta = golden_meta("result_chord_body_failed.json");
    assert_eq!(meta.status, TaskState::Failure);
    assert_eq!(meta.task_id, "chordfail-body");
    let exc = meta.exception().expect("exception");
    assert_eq!(exc.exc_type, "ChordError");
    assert_eq!(exc.exc_module, "celery.exceptions");
    assert_eq!(
        exc.message(),
        "Dependency 26e7ed8b-b81a-4e4d-990b-d03682721fbb raised ValueError('header-fail')"
    );
    assert!(meta
        .traceback
        .as_deref()
        .is_some_and(|t| t.starts_with("ValueError: header-fail\n")));
}

/// The meta celeriac's own worker writes with `result_extended` reads back unchanged and
/// has Python's key set.
#[test]
fn celeriac_extended_meta_has_pythons_keys() {
    let mut meta = TaskMeta::new("kw", TaskState::Success, json!(11));
    meta.date_done = Some("2026-11-26T16:04:27.892536+00:00".into());
    meta.name = Some("tasks.add".into());
    meta.args = Some(json!([]));
    meta.kwargs = Some(json!({"x": 5, "y": 6}));
    meta.worker = Some("w3@vm".into());
    meta.retries = Some(0);
    meta.queue = Some("celery".into());
    assert_eq!(
        serde_json::to_value(&meta).expect("json"),
        fixture("result_extended_success.json")
    );
}

#[test]
fn saved_group_result() {
    let raw = fixture("groupresult_saved.json");
    let tuple = raw["result"].as_array().expect("[[gid, null], members]");
    assert_eq!(
        tuple[0],
        json!(["c3c92a7b-8bb9-475d-aa02-36c5bf48971d", null])
    );
    let members = tuple[1].as_array().expect("members");
    let ids: Vec<&str> = members
        .iter()
        .map(|m| {
            assert_eq!(m[1], Value::Null, "no parent");
            assert_eq!(m[0][1], Value::Null, "no nested parent");
            m[0][0].as_str().expect("member id")
        })
        .collect();
    assert_eq!(
        ids,
        [
            "5d11b560-6f3d-40e6-b175-d92345d2e12e",
            "54a3a1db-9a85-4224-a9f8-7d6f33bdaf23"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// §7.6 events and §7.7 pidbox: stored for later; here they only need to be envelopes
// ---------------------------------------------------------------------------------------

/// PROTOCOL shows these bodies decoded (a JSON value where the wire has base64 text).
fn golden_envelope(name: &str) -> Envelope {
    let raw = fixture(name);
    let envelope = Envelope::from_kombu_json(&fixture_bytes(name))
        .unwrap_or_else(|e| panic!("{name}: not a kombu envelope: {e}"));
    assert_eq!(envelope.content_type, "application/json", "{name}");
    assert_eq!(envelope.content_encoding, "utf-8", "{name}");
    assert_eq!(
        Value::Object(envelope.headers.clone().into_map()),
        raw["headers"],
        "{name}: headers"
    );
    assert_eq!(
        serde_json::to_value(&envelope.properties).expect("properties"),
        raw["properties"],
        "{name}: properties"
    );
    let body: Value = serde_json::from_slice(&envelope.body).expect("body JSON");
    assert_eq!(body, raw["body"], "{name}: body");
    // Written as kombu does it: same fields, base64 body.
    let wire = envelope.to_kombu_json();
    assert_eq!(
        Envelope::from_kombu_json(&wire).expect("re-read"),
        envelope,
        "{name}"
    );
    envelope
}

fn envelope_body(envelope: &Envelope) -> Value {
    serde_json::from_slice(&envelope.body).expect("body JSON")
}

fn delivery(properties: &Properties) -> (&str, &str) {
    let info = properties.delivery_info.as_ref().expect("delivery_info");
    (info.exchange.as_str(), info.routing_key.as_str())
}

#[test]
fn worker_event_envelopes() {
    for (name, kind, routing_key) in [
        ("event_worker_online.json", "worker-online", "worker.online"),
        (
            "event_worker_heartbeat.json",
            "worker-heartbeat",
            "worker.heartbeat",
        ),
        (
            "event_worker_offline.json",
            "worker-offline",
            "worker.offline",
        ),
    ] {
        let envelope = golden_envelope(name);
        let body = envelope_body(&envelope);
        assert_eq!(body["type"], kind, "{name}");
        assert_eq!(envelope.headers["hostname"], body["hostname"], "{name}");
        assert_eq!(
            envelope.properties.delivery_mode,
            Some(1),
            "{name}: transient"
        );
        assert_eq!(
            delivery(&envelope.properties),
            ("celeryev", routing_key),
            "{name}"
        );
        assert!(
            body["timestamp"].is_f64() && body["freq"].is_f64(),
            "{name}"
        );
        // A task decoder refuses them: there is no task header.
        assert!(TaskMessage::decode(&envelope).is_err(), "{name}");
    }
}

#[test]
fn task_multi_event_envelope() {
    let envelope = golden_envelope("event_task_multi.json");
    assert_eq!(delivery(&envelope.properties), ("celeryev", "task.multi"));
    let body = envelope_body(&envelope);
    let batch = body.as_array().expect("a batch is a JSON list");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0], fixture("event_task_received_body.json"));
}

#[test]
fn task_event_bodies() {
    for (name, kind, uuid) in [
        ("event_task_sent_body.json", "task-sent", "sentev-0014"),
        (
            "event_task_received_body.json",
            "task-received",
            "plain-0001",
        ),
        ("event_task_started_body.json", "task-started", "plain-0001"),
        (
            "event_task_succeeded_body.json",
            "task-succeeded",
            "plain-0001",
        ),
        ("event_task_failed_body.json", "task-failed", "boom-0004"),
        ("event_task_retried_body.json", "task-retried", "flaky-0006"),
        (
            "event_task_revoked_body.json",
            "task-revoked",
            "expired-0010",
        ),
    ] {
        let body = fixture(name);
        assert_eq!(body["type"], kind, "{name}");
        assert_eq!(body["uuid"], uuid, "{name}");
        assert!(body["hostname"].is_string(), "{name}");
        assert!(body["clock"].is_u64(), "{name}");
        assert!(body["timestamp"].is_f64(), "{name}");
        assert_eq!(body["utcoffset"], json!(0.0), "{name}");
    }
}

#[test]
fn pidbox_envelopes() {
    for (name, method) in [
        ("pidbox_ping_request.json", "ping"),
        ("pidbox_revoke_request.json", "revoke"),
    ] {
        let envelope = golden_envelope(name);
        let body = envelope_body(&envelope);
        assert_eq!(body["method"], method, "{name}");
        assert_eq!(
            body["reply_to"]["exchange"], "reply.celery.pidbox",
            "{name}"
        );
        assert!(
            envelope.headers["expires"].is_f64(),
            "{name}: expires in Unix seconds"
        );
        assert_eq!(
            delivery(&envelope.properties),
            ("celery.pidbox", ""),
            "{name}"
        );
        assert_eq!(envelope.properties.delivery_mode, Some(2), "{name}");
    }
    let revoke = envelope_body(&golden_envelope("pidbox_revoke_request.json"));
    assert_eq!(revoke["arguments"]["task_id"], "revoke-me-0013");

    for (name, reply_queue) in [
        (
            "pidbox_ping_reply.json",
            "a3637b71-7a12-3e44-ac09-cbdc19a1f972",
        ),
        (
            "pidbox_active_reply.json",
            "58a49c95-3070-3678-b257-04904500f29f",
        ),
    ] {
        let envelope = golden_envelope(name);
        assert_eq!(
            delivery(&envelope.properties),
            ("reply.celery.pidbox", reply_queue),
            "{name}"
        );
        assert_eq!(envelope.properties.delivery_mode, Some(1), "{name}");
        assert!(envelope.headers["ticket"].is_string(), "{name}");
        assert!(
            envelope_body(&envelope)["w2@vm"].is_object()
                || envelope_body(&envelope)["w2@vm"].is_array()
        );
    }
    // The ping reply answers the ping request: same ticket, reply queue from reply_to.
    let request = envelope_body(&golden_envelope("pidbox_ping_request.json"));
    let reply = golden_envelope("pidbox_ping_reply.json");
    assert_eq!(reply.headers["ticket"], request["ticket"]);
    assert_eq!(
        delivery(&reply.properties).1,
        request["reply_to"]["routing_key"]
    );
    assert_eq!(envelope_body(&reply), json!({"w2@vm": {"ok": "pong"}}));
}
