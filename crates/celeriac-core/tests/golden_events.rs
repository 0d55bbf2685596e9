//! Golden tests of events and remote control: the bodies and headers celeriac builds
//! equal what Celery 5.7 sent in the captures under `tests/golden/` (PROTOCOL.md §7.6,
//! §7.7), and celeriac reads the captured requests and replies.

use celeriac_core::event::{
    event_envelope, events_in, EventKind, Origin, WorkerStatus, TASK_MULTI,
};
use celeriac_core::message::Envelope;
use celeriac_core::pidbox::{self, ControlRequest};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// The captured envelope (body shown decoded) as an [`Envelope`].
fn envelope(name: &str) -> Envelope {
    let raw = serde_json::to_vec(&fixture(name)).expect("json");
    Envelope::from_kombu_json(&raw).expect("envelope")
}

fn origin_of(body: &Value) -> (Origin, u64, f64) {
    (
        Origin {
            hostname: body["hostname"].as_str().expect("hostname").into(),
            utcoffset: body["utcoffset"].as_f64().expect("utcoffset"),
            pid: body["pid"].as_u64().expect("pid") as u32,
        },
        body["clock"].as_u64().expect("clock"),
        body["timestamp"].as_f64().expect("timestamp"),
    )
}

fn s(body: &Value, key: &str) -> String {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .to_string()
}

fn opt(body: &Value, key: &str) -> Option<String> {
    body[key].as_str().map(str::to_string)
}

/// Builds `kind` with the captured common fields and compares with the capture.
fn assert_body(name: &str, captured: &Value, kind: EventKind) {
    let (origin, clock, timestamp) = origin_of(captured);
    let built = kind.to_body(&origin, clock, timestamp);
    assert_eq!(&built, captured, "{name}");
    // Same keys in the same order as Celery (serde_json keeps them sorted unless
    // preserve_order; compare the sets at least).
    assert_eq!(
        built.as_object().map(|o| o.len()),
        captured.as_object().map(|o| o.len()),
        "{name}"
    );
}

#[test]
fn task_event_bodies_match_celery() {
    let body = fixture("event_task_received_body.json");
    assert_body(
        "task-received",
        &body,
        EventKind::TaskReceived {
            uuid: s(&body, "uuid"),
            name: s(&body, "name"),
            args: celeriac_core::event::py_repr_args(&[json!(2), json!(3)]),
            kwargs: celeriac_core::event::py_repr_kwargs(&Default::default()),
            root_id: opt(&body, "root_id"),
            parent_id: None,
            retries: 0,
            eta: None,
            expires: None,
        },
    );
    let body = fixture("event_task_started_body.json");
    assert_body(
        "task-started",
        &body,
        EventKind::TaskStarted {
            uuid: s(&body, "uuid"),
        },
    );
    let body = fixture("event_task_succeeded_body.json");
    assert_body(
        "task-succeeded",
        &body,
        EventKind::TaskSucceeded {
            uuid: s(&body, "uuid"),
            result: celeriac_core::event::py_repr(&json!(5)),
            runtime: body["runtime"].as_f64().expect("runtime"),
        },
    );
    let body = fixture("event_task_failed_body.json");
    assert_body(
        "task-failed",
        &body,
        EventKind::TaskFailed {
            uuid: s(&body, "uuid"),
            exception: s(&body, "exception"),
            traceback: s(&body, "traceback"),
        },
    );
    let body = fixture("event_task_retried_body.json");
    assert_body(
        "task-retried",
        &body,
        EventKind::TaskRetried {
            uuid: s(&body, "uuid"),
            exception: s(&body, "exception"),
            traceback: s(&body, "traceback"),
        },
    );
    let body = fixture("event_task_revoked_body.json");
    assert_body(
        "task-revoked",
        &body,
        EventKind::TaskRevoked {
            uuid: s(&body, "uuid"),
            terminated: false,
            signum: None,
            expired: true,
        },
    );
    let body = fixture("event_task_sent_body.json");
    assert_body(
        "task-sent",
        &body,
        EventKind::TaskSent {
            uuid: s(&body, "uuid"),
            name: s(&body, "name"),
            args: celeriac_core::event::py_repr_args(&[json!(1), json!(1)]),
            kwargs: "{}".into(),
            root_id: opt(&body, "root_id"),
            parent_id: None,
            retries: 0,
            eta: opt(&body, "eta"),
            expires: None,
            queue: s(&body, "queue"),
            exchange: s(&body, "exchange"),
            routing_key: s(&body, "routing_key"),
        },
    );
}

fn status_of(body: &Value) -> WorkerStatus {
    let load = body["loadavg"].as_array().expect("loadavg");
    WorkerStatus {
        freq: body["freq"].as_f64().expect("freq"),
        active: body["active"].as_u64().expect("active"),
        processed: body["processed"].as_u64().expect("processed"),
        loadavg: [
            load[0].as_f64().expect("load"),
            load[1].as_f64().expect("load"),
            load[2].as_f64().expect("load"),
        ],
        sw_ident: s(body, "sw_ident"),
        sw_ver: s(body, "sw_ver"),
        sw_sys: s(body, "sw_sys"),
    }
}

#[test]
fn worker_events_match_celery_envelopes() {
    for (file, make, key) in [
        (
            "event_worker_online.json",
            EventKind::WorkerOnline as fn(WorkerStatus) -> EventKind,
            "worker.online",
        ),
        (
            "event_worker_heartbeat.json",
            EventKind::WorkerHeartbeat,
            "worker.heartbeat",
        ),
        (
            "event_worker_offline.json",
            EventKind::WorkerOffline,
            "worker.offline",
        ),
    ] {
        let raw = fixture(file);
        let body = &raw["body"];
        let kind = make(status_of(body));
        assert_eq!(kind.routing_key(), key);
        assert_eq!(
            raw["properties"]["delivery_info"]["routing_key"], key,
            "{file}"
        );
        assert_body(file, body, kind);
        // The envelope: header hostname, transient, JSON.
        let (origin, clock, timestamp) = origin_of(body);
        let built = event_envelope(
            &origin.hostname,
            &make(status_of(body)).to_body(&origin, clock, timestamp),
        );
        let captured = envelope(file);
        assert_eq!(built.headers, captured.headers, "{file}");
        assert_eq!(built.content_type, captured.content_type);
        assert_eq!(built.content_encoding, captured.content_encoding);
        assert_eq!(
            built.properties.delivery_mode,
            captured.properties.delivery_mode
        );
        let built_body: Value = serde_json::from_slice(&built.body).expect("json");
        assert_eq!(&built_body, body);
    }
}

#[test]
fn task_multi_batches_are_read_as_lists() {
    let raw = fixture("event_task_multi.json");
    assert_eq!(
        raw["properties"]["delivery_info"]["routing_key"],
        TASK_MULTI
    );
    let events = events_in(&envelope("event_task_multi.json"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "task-received");
    assert_eq!(events[0]["uuid"], "plain-0001");
    let single = events_in(&envelope("event_worker_online.json"));
    assert_eq!(single.len(), 1);
    assert_eq!(single[0]["type"], "worker-online");
}

#[test]
fn captured_requests_are_read() {
    let ping = ControlRequest::from_envelope(&envelope("pidbox_ping_request.json")).expect("ping");
    assert_eq!(ping.method, "ping");
    assert!(ping.arguments.is_empty());
    assert!(ping.is_for("w2@vm"));
    assert_eq!(
        ping.ticket.as_deref(),
        Some("a1eee5f5-f8b7-47c1-9797-6921f7aef9f9")
    );
    let reply_to = ping.reply_to.clone().expect("reply_to");
    assert_eq!(reply_to.exchange, "reply.celery.pidbox");
    assert_eq!(
        pidbox::reply_queue(&reply_to.exchange, &reply_to.routing_key),
        "a3637b71-7a12-3e44-ac09-cbdc19a1f972.reply.celery.pidbox"
    );
    let captured = envelope("pidbox_ping_request.json");
    assert_eq!(pidbox::message_clock(&captured), 1);
    assert_eq!(pidbox::request_expires(&captured), Some(1795709013.4243605));

    // What celeriac sends for the same request is the same body and headers.
    let built = ping.to_envelope(1, 1795709013.4243605);
    let body: Value = serde_json::from_slice(&built.body).expect("json");
    assert_eq!(body, fixture("pidbox_ping_request.json")["body"]);
    assert_eq!(built.headers, captured.headers);
    assert_eq!(built.properties.delivery_mode, Some(2));

    let revoke =
        ControlRequest::from_envelope(&envelope("pidbox_revoke_request.json")).expect("revoke");
    assert_eq!(revoke.method, "revoke");
    assert_eq!(revoke.arguments["task_id"], "revoke-me-0013");
    assert_eq!(revoke.arguments["terminate"], false);
    assert_eq!(revoke.arguments["signal"], "SIGTERM");
}

#[test]
fn replies_match_celery() {
    let captured = envelope("pidbox_ping_reply.json");
    let built = pidbox::reply_envelope(
        "w2@vm",
        pidbox::ok("pong"),
        "a1eee5f5-f8b7-47c1-9797-6921f7aef9f9",
        3,
    );
    assert_eq!(built.headers, captured.headers);
    assert_eq!(
        built.properties.delivery_mode,
        captured.properties.delivery_mode
    );
    let body: Value = serde_json::from_slice(&built.body).expect("json");
    assert_eq!(body, fixture("pidbox_ping_reply.json")["body"]);

    let (ticket, replies) =
        pidbox::parse_reply(&envelope("pidbox_active_reply.json")).expect("reply");
    assert_eq!(ticket, "0093ed38-a2ca-42f4-bcde-68504a75873f");
    let active = replies["w2@vm"].as_array().expect("list");
    assert_eq!(active[0]["id"], "sleepy-active-0012");
    assert_eq!(active[0]["delivery_info"]["routing_key"], "celery");
}
