//! The Redis broker on the wire: what it writes is what kombu writes, and what Python
//! Celery wrote (the captures of PROTOCOL.md §7, kept in celeriac-core's golden
//! fixtures) is what it reads. Each test on its own key prefix; skipped without Redis.

use std::time::Duration;

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_broker::{Broker, FetchParams, Publish};
use celeriac_core::{Queue, TaskMessage};
use redis::AsyncCommands;
use serde_json::{json, Value};

/// `add.apply_async((4, 5), countdown=3600, expires=7200, priority=7)` as Python
/// Celery 5.7 put it in the list `celery\x06\x166`.
const PYTHON_PRIORITY_7: &str =
    include_str!("../../celeriac-core/tests/golden/task_countdown_expires_priority.json");
/// `HGETALL unacked` while a Python worker held that message.
const PYTHON_UNACKED: &str = include_str!("../../celeriac-core/tests/golden/unacked_entry.json");

fn harness(test: &str) -> Option<RedisHarness> {
    celeriac_redis::testing::redis_url_or_skip(test).map(|url| RedisHarness::new(&url))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

fn params(queue: &str, lease: Duration) -> FetchParams {
    FetchParams {
        queues: vec![queue.to_string()],
        max: 10,
        wait: Duration::from_millis(200),
        consumer: "wire-test".into(),
        lease,
    }
}

async fn now_s(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s as f64 + us as f64 / 1e6
}

#[tokio::test]
async fn published_messages_are_kombu_envelopes_in_the_priority_list() {
    let Some(h) = harness("published_messages_are_kombu_envelopes_in_the_priority_list") else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let mut message = TaskMessage::new(
        "tasks.add",
        "wire-1",
        vec![4.into(), 5.into()],
        Default::default(),
    );
    message.properties.priority = Some(7);
    let mut plain = TaskMessage::new("tasks.add", "wire-2", vec![], Default::default());
    plain.properties.priority = None;
    broker
        .publish(vec![
            Publish {
                queue: "short".into(),
                envelope: message.encode(),
                not_before: None,
            },
            Publish {
                queue: "short".into(),
                envelope: plain.encode(),
                not_before: None,
            },
        ])
        .await
        .expect("publish");

    let keys = h.keys();
    assert_eq!(
        keys.queue("short", 7),
        format!("{}short\x06\x166", h.prefix())
    );
    let at_6: Vec<Vec<u8>> = conn
        .lrange(keys.queue("short", 7), 0, -1)
        .await
        .expect("LRANGE");
    let at_0: Vec<Vec<u8>> = conn
        .lrange(keys.queue("short", 0), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(
        (at_6.len(), at_0.len()),
        (1, 1),
        "priority 7 → step 6; none → step 0"
    );

    let ours = json(&at_6[0]);
    let python = json(PYTHON_PRIORITY_7.as_bytes());
    let top_keys = |v: &Value| {
        v.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut expected_top = top_keys(&python);
    let mut got_top = top_keys(&ours);
    expected_top.sort();
    got_top.sort();
    assert_eq!(got_top, expected_top, "the envelope's fields are kombu's");
    let properties = &ours["properties"];
    assert_eq!(
        properties["delivery_info"],
        json!({"exchange": "", "routing_key": "short"})
    );
    assert_eq!(properties["priority"], 7);
    assert_eq!(properties["body_encoding"], "base64");
    assert_eq!(properties["correlation_id"], "wire-1");
    assert_eq!(properties["delivery_mode"], 2);
    let tag = properties["delivery_tag"].as_str().expect("a delivery tag");
    assert_eq!(
        uuid::Uuid::parse_str(tag).map(|u| u.get_version_num()),
        Ok(4)
    );
    assert_eq!(ours["content-type"], "application/json");
    assert_eq!(ours["headers"]["task"], "tasks.add");
    assert_eq!(ours["headers"]["id"], "wire-1");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD
        .decode(ours["body"].as_str().expect("base64 body"))
        .expect("base64");
    assert_eq!(
        json(&body),
        json!([[4, 5], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
        "the body is the three-element array"
    );
    assert_eq!(
        json(&at_0[0])["properties"]["priority"],
        0,
        "an explicit priority 0"
    );
}

#[tokio::test]
async fn a_python_envelope_is_fetched_from_its_priority_list_and_held_as_kombu_holds_it() {
    let Some(h) = harness("a_python_envelope_is_fetched_from_its_priority_list") else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    let list = keys.queue("celery", 7);
    assert!(list.ends_with("celery\x06\x166"));
    let _: () = conn.lpush(&list, PYTHON_PRIORITY_7).await.expect("LPUSH");

    let before = now_s(&mut conn).await;
    let got = broker
        .fetch(&params("celery", Duration::from_secs(60)))
        .await
        .expect("fetch");
    let after = now_s(&mut conn).await;
    assert_eq!(got.len(), 1);
    let delivery = &got[0];
    assert_eq!(delivery.queue, "celery");
    assert_eq!(delivery.delivery_count, 1);
    assert_eq!(delivery.envelope.task_id_hint(), Some("opts-0002"));
    assert_eq!(delivery.envelope.properties.priority, Some(7));
    let message = TaskMessage::decode(&delivery.envelope).expect("a valid task message");
    assert_eq!(message.args, vec![json!(4), json!(5)]);

    // The unacked entry is what the Python worker wrote for the same message (§7.2);
    // celeriac keys it by its hold id (the delivery's tag), not the kombu tag, so
    // that a hold names one delivery.
    let python_entry = json(PYTHON_UNACKED.as_bytes());
    let tag = delivery.tag.0.as_str();
    assert_ne!(tag, python_entry["field"].as_str().expect("field"));
    let stored: Vec<u8> = conn.hget(&keys.unacked, tag).await.expect("HGET");
    assert_eq!(json(&stored), python_entry["value (parsed)"]);
    let raw = String::from_utf8(stored).expect("UTF-8");
    assert!(
        raw.contains(PYTHON_PRIORITY_7.trim()),
        "the envelope is stored verbatim"
    );
    let score: f64 = conn.zscore(&keys.unacked_index, tag).await.expect("ZSCORE");
    assert!(
        score >= before - 0.001 && score <= after + 0.001,
        "unacked_index holds the delivery time in Unix seconds: {before} <= {score} <= {after}"
    );
    assert!(score.fract() != 0.0, "a float, as kombu's time.time()");

    broker
        .ack(std::slice::from_ref(&delivery.tag))
        .await
        .expect("ack");
    let left: bool = conn.hexists(&keys.unacked, tag).await.expect("HEXISTS");
    let indexed: Option<f64> = conn.zscore(&keys.unacked_index, tag).await.expect("ZSCORE");
    assert!(
        !left && indexed.is_none(),
        "ack = HDEL unacked + ZREM unacked_index"
    );
}

#[tokio::test]
async fn a_lapsed_message_is_restored_as_kombu_restores_it() {
    let Some(h) = harness("a_lapsed_message_is_restored_as_kombu_restores_it") else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    let list = keys.queue("celery", 7);
    let _: () = conn.lpush(&list, PYTHON_PRIORITY_7).await.expect("LPUSH");
    let _: () = conn
        .lpush(&list, "{\"placeholder\": 1}")
        .await
        .expect("LPUSH");
    let got = broker
        .fetch(&FetchParams {
            max: 1,
            ..params("celery", Duration::from_millis(100))
        })
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(broker.restore_expired().await.expect("restore"), 1);

    // RPUSH: at the tail, served next; the tag is kept, both flags set, and the
    // deliveries so far recorded for the next delivery's count.
    let elements: Vec<Vec<u8>> = conn.lrange(&list, 0, -1).await.expect("LRANGE");
    assert_eq!(elements.len(), 2);
    let mut expected = json(PYTHON_PRIORITY_7.as_bytes());
    expected["headers"]["redelivered"] = true.into();
    expected["properties"]["delivery_info"]["redelivered"] = true.into();
    expected["headers"][celeriac_broker::PRIOR_DELIVERIES_HEADER] = 1.into();
    assert_eq!(json(&elements[1]), expected);
    assert_eq!(elements[0], b"{\"placeholder\": 1}");
    let unacked: usize = conn.hlen(&keys.unacked).await.expect("HLEN");
    assert_eq!(unacked, 0);
}

#[tokio::test]
async fn declared_queues_are_bound_as_kombu_binds_them() {
    let Some(h) = harness("declared_queues_are_bound_as_kombu_binds_them") else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    broker
        .declare_queue(&Queue::new("celery"))
        .await
        .expect("declare");
    broker
        .declare_queue(&Queue::new("short-task").routing_key("short.#"))
        .await
        .expect("declare");
    let members: Vec<String> = conn
        .smembers(keys.binding("celery"))
        .await
        .expect("SMEMBERS");
    assert_eq!(
        members,
        ["celery\x06\x16\x06\x16celery"],
        "PROTOCOL.md §7.3"
    );
    let permanent: Vec<String> = conn
        .smembers(keys.binding_permanent("celery"))
        .await
        .expect("SMEMBERS");
    assert_eq!(permanent, ["celery\x06\x16\x06\x16celery"]);
    let topic: Vec<String> = conn
        .smembers(keys.binding("tasks"))
        .await
        .expect("SMEMBERS");
    assert_eq!(topic, ["short.#\x06\x16\x06\x16short-task"]);
}

#[tokio::test]
async fn redis_urls_reach_the_redis_broker_or_say_why_not() {
    use celeriac_broker::{connect_with, BrokerError, ConnectOptions};
    let options = ConnectOptions::default();
    // TLS is built in (tests/redis_tls.rs connects); a bad TLS option is the URL's
    // fault and names no password.
    match connect_with(
        "rediss://u:secret@127.0.0.1:6390/0?ssl_cert_reqs=sometimes",
        &options,
    )
    .await
    {
        Err(BrokerError::InvalidUrl { url, reason }) => {
            assert!(reason.contains("ssl_cert_reqs"), "{reason}");
            assert!(!url.contains("secret"), "{url}");
        }
        other => panic!("a bad ssl_cert_reqs: {:?}", other.map(|b| b.describe())),
    }
    match connect_with("redis+socket:///nonexistent/celeriac.sock", &options).await {
        Err(BrokerError::Connection(_)) => {}
        other => panic!("a missing socket: {:?}", other.map(|b| b.describe())),
    }
    assert!(matches!(
        connect_with("redis://h/notadb", &options).await,
        Err(BrokerError::InvalidUrl { .. })
    ));
    let Some(url) = celeriac_redis::testing::redis_url_or_skip("redis_urls_reach_the_redis_broker")
    else {
        return;
    };
    // Connects only; writes nothing.
    let broker = connect_with(&url, &options).await.expect("connect");
    assert!(broker.describe().starts_with("redis://"));
    assert_eq!(
        broker.capabilities().priority,
        celeriac_broker::PriorityOrder::LowerFirst
    );
}
