//! Leases on Redis: a renewed hold is never restored (neither by celeriac's lease
//! scan nor by kombu's visibility-timeout scan, however small the timeout), a dead
//! consumer's message is back within its lease, a Python worker's hold (no lease) is
//! restored only after the visibility timeout, and a fetch dropped while waiting
//! loses nothing, and a killed waiting connection is replaced. Each test on its own
//! key prefix; skipped without Redis.

use std::time::Duration;

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_broker::redis::RedisBrokerOptions;
use celeriac_broker::{Broker, Delivery, FetchParams, Publish};
use celeriac_core::TaskMessage;
use redis::AsyncCommands;
use tokio::time::Instant;

fn harness(test: &str, visibility_timeout: Duration) -> Option<RedisHarness> {
    let url = celeriac_redis::testing::redis_url_or_skip(test)?;
    let mut options = RedisBrokerOptions::default();
    options.visibility_timeout = visibility_timeout;
    options.visibility_scan_interval = Duration::ZERO;
    Some(RedisHarness::with_options(&url, options))
}

fn publish(queue: &str, id: &str) -> Publish {
    Publish {
        queue: queue.to_string(),
        envelope: TaskMessage::new("tasks.long", id, vec![], Default::default()).encode(),
        not_before: None,
    }
}

fn params(queue: &str, wait: Duration, lease: Duration) -> FetchParams {
    FetchParams {
        queues: vec![queue.to_string()],
        max: 1,
        wait,
        consumer: "lease-test".into(),
        lease,
    }
}

async fn fetch_one(broker: &dyn Broker, queue: &str, lease: Duration) -> Delivery {
    let mut got = broker
        .fetch(&params(queue, Duration::from_secs(2), lease))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1, "expected one message from {queue}");
    got.remove(0)
}

async fn now_s(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s as f64 + us as f64 / 1e6
}

#[tokio::test]
async fn a_renewed_hold_outlives_its_lease_and_any_visibility_timeout() {
    let visibility = Duration::from_millis(300);
    let Some(h) = harness("a_renewed_hold_outlives_its_lease", visibility) else {
        return;
    };
    let holder = h.redis_broker().await;
    let other = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    holder
        .publish(vec![publish("long", "eta-task")])
        .await
        .expect("publish");
    let lease = Duration::from_millis(600);
    let held = fetch_one(&holder, "long", lease).await;

    // Renew every 100 ms for 2 s: over three leases and six visibility timeouts.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        holder
            .renew_leases(std::slice::from_ref(&held.tag), lease)
            .await
            .expect("renew");
        assert_eq!(other.restore_expired().await.expect("restore"), 0);
        // What a Python worker's restore_visible would select.
        let cutoff = now_s(&mut conn).await - visibility.as_secs_f64();
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&keys.unacked_index)
            .arg("-inf")
            .arg(cutoff)
            .query_async(&mut conn)
            .await
            .expect("ZRANGEBYSCORE");
        assert!(old.is_empty(), "kombu's scan would restore {old:?}");
        let got = other
            .fetch(&params("long", Duration::ZERO, lease))
            .await
            .expect("fetch");
        assert!(got.is_empty(), "delivered twice while renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.ack(&[held.tag]).await.expect("ack");
    let left: usize = conn.hlen(&keys.unacked).await.expect("HLEN");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_dead_consumers_message_is_back_within_its_lease() {
    let Some(h) = harness(
        "a_dead_consumers_message_is_back",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let lease = Duration::from_secs(1);
    let dying = h.redis_broker().await;
    dying
        .publish(vec![publish("work", "survivor")])
        .await
        .expect("publish");
    let first = fetch_one(&dying, "work", lease).await;
    let taken = Instant::now();
    drop(dying);

    let rescuer = h.redis_broker().await;
    let second = loop {
        rescuer.restore_expired().await.expect("restore");
        let mut got = rescuer
            .fetch(&params("work", Duration::ZERO, lease))
            .await
            .expect("fetch");
        if let Some(delivery) = got.pop() {
            break delivery;
        }
        assert!(
            taken.elapsed() < lease + Duration::from_secs(2),
            "not back within the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = taken.elapsed();
    assert!(
        after >= lease - Duration::from_millis(50),
        "restored early: {after:?}"
    );
    assert_eq!(second.envelope.task_id_hint(), Some("survivor"));
    assert_eq!(second.delivery_count, 2);
    assert_ne!(second.tag, first.tag);
    assert_eq!(
        second.envelope.headers.get("redelivered"),
        Some(&true.into())
    );
    rescuer.ack(&[second.tag]).await.expect("ack");
}

#[tokio::test]
async fn a_python_workers_hold_is_restored_only_after_the_visibility_timeout() {
    let visibility = Duration::from_secs(2);
    let Some(h) = harness("a_python_workers_hold_is_restored", visibility) else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    // What a Python worker writes when it takes a message (PROTOCOL.md §2.5).
    let envelope = String::from_utf8(
        TaskMessage::new("tasks.add", "python-held", vec![], Default::default())
            .encode()
            .to_kombu_json(),
    )
    .expect("UTF-8");
    let mut value: serde_json::Value = serde_json::from_str(&envelope).expect("JSON");
    value["properties"]["delivery_tag"] = "py-tag".into();
    value["properties"]["delivery_info"] =
        serde_json::json!({"exchange": "", "routing_key": "celery"});
    let entry = serde_json::json!([value, "", "celery"]).to_string();
    let taken_at = now_s(&mut conn).await;
    let _: () = redis::pipe()
        .atomic()
        .zadd(&keys.unacked_index, "py-tag", taken_at)
        .hset(&keys.unacked, "py-tag", &entry)
        .query_async(&mut conn)
        .await
        .expect("seed");
    let started = Instant::now();

    let restored = loop {
        let restored = broker.restore_expired().await.expect("restore");
        if restored > 0 {
            break restored;
        }
        let waiting: usize = conn.llen(keys.queue("celery", 0)).await.expect("LLEN");
        assert_eq!(waiting, 0);
        assert!(
            started.elapsed() < visibility + Duration::from_secs(3),
            "never restored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(restored, 1);
    assert!(
        started.elapsed() >= visibility - Duration::from_millis(100),
        "restored after {:?}, before the visibility timeout",
        started.elapsed()
    );
    let gone: bool = conn
        .hexists(&keys.unacked, "py-tag")
        .await
        .expect("HEXISTS");
    assert!(!gone);
    let delivery = fetch_one(&broker, "celery", Duration::from_secs(30)).await;
    assert_eq!(delivery.envelope.task_id_hint(), Some("python-held"));
    assert_eq!(
        delivery.delivery_count, 2,
        "kombu's redelivered flag counts"
    );
    broker.ack(&[delivery.tag]).await.expect("ack");
}

#[tokio::test]
async fn a_fetch_dropped_while_waiting_loses_nothing() {
    let Some(h) = harness("a_fetch_dropped_while_waiting", Duration::from_secs(3600)) else {
        return;
    };
    let consumer = h.redis_broker().await;
    let producer = h.redis_broker().await;
    let lease = Duration::from_secs(60);
    let waiting = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .fetch(&params("drop", Duration::from_secs(3), lease))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiting.abort();
    let _ = waiting.await;
    // The abandoned BRPOP is still on the server: it takes this message, records it
    // and gives it back.
    producer
        .publish(vec![publish("drop", "kept")])
        .await
        .expect("publish");
    let started = Instant::now();
    let delivery = loop {
        let mut got = producer
            .fetch(&params("drop", Duration::from_millis(200), lease))
            .await
            .expect("fetch");
        if let Some(delivery) = got.pop() {
            break delivery;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the message was lost"
        );
    };
    assert_eq!(delivery.envelope.task_id_hint(), Some("kept"));
    producer.ack(&[delivery.tag]).await.expect("ack");
}

#[tokio::test]
async fn a_killed_waiting_connection_is_replaced() {
    let Some(h) = harness(
        "a_killed_waiting_connection_is_replaced",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let consumer = h.redis_broker().await;
    let producer = h.redis_broker().await;
    let lease = Duration::from_secs(60);
    // A first wait leaves an idle waiting connection in the pool.
    let got = consumer
        .fetch(&params("killed", Duration::from_millis(50), lease))
        .await
        .expect("fetch");
    assert!(got.is_empty());
    let mut admin = h.connection().await;
    let name = celeriac_broker::redis::waiting_client_name(h.prefix());
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("CLIENT LIST");
    let ids: Vec<String> = clients
        .lines()
        .filter(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 1, "one idle waiting connection named {name}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&ids[0])
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");

    let waiting = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .fetch(&params("killed", Duration::from_secs(5), lease))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    producer
        .publish(vec![publish("killed", "after-kill")])
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the wait returns soon after the publish")
        .expect("no panic")
        .expect("the dead idle connection is replaced, not reported");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.task_id_hint(), Some("after-kill"));
    consumer.ack(&[got[0].tag.clone()]).await.expect("ack");
}

#[tokio::test]
async fn python_holds_are_routed_back_through_the_bindings() {
    let visibility = Duration::from_millis(100);
    let Some(h) = harness(
        "python_holds_are_routed_back_through_the_bindings",
        visibility,
    ) else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let keys = h.keys();
    broker
        .declare_queue(&celeriac_core::Queue::new("short-task").routing_key("short.#"))
        .await
        .expect("declare");
    let entry = |tag: &str, exchange: &str, routing_key: &str| {
        let mut value: serde_json::Value = serde_json::from_slice(
            &TaskMessage::new("tasks.x", tag, vec![], Default::default())
                .encode()
                .to_kombu_json(),
        )
        .expect("JSON");
        value["properties"]["delivery_tag"] = tag.into();
        value["properties"]["priority"] = 4.into();
        value["properties"]["delivery_info"] =
            serde_json::json!({"exchange": exchange, "routing_key": routing_key});
        serde_json::json!([value, exchange, routing_key]).to_string()
    };
    let old = now_s(&mut conn).await - 10.0;
    for (tag, exchange, routing_key) in [
        ("routed", "tasks", "short.notify"),
        ("nowhere", "tasks", "long.report"),
    ] {
        let _: () = redis::pipe()
            .zadd(&keys.unacked_index, tag, old)
            .hset(&keys.unacked, tag, entry(tag, exchange, routing_key))
            .query_async(&mut conn)
            .await
            .expect("seed");
    }
    assert_eq!(broker.restore_expired().await.expect("restore"), 1);
    let routed: Vec<String> = conn
        .lrange(keys.queue("short-task", 4), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(
        routed.len(),
        1,
        "topic binding short.# → short-task, priority 4 → step 3"
    );
    let dead = broker
        .dead_letters(&celeriac_broker::DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(
        dead.len(),
        1,
        "an unroutable hold is dead-lettered, not dropped"
    );
    assert!(
        dead[0].reason.contains("no queue is bound"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].queue, "long.report");
    let left: usize = conn.hlen(&keys.unacked).await.expect("HLEN");
    assert_eq!(left, 0);
}
