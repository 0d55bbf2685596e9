//! The Redis broker across connection loss, on a private `redis-server` (its own
//! port and temp dir, append-only with `fsync` on every write) that the tests stop
//! and start again: a waiting fetch fails promptly when Redis goes and the next one
//! works when it is back; a publish during the outage lands once Redis is back; a
//! publish gives up after `publish_retry_for`; a long wait is never cut short by the
//! response timeout.
//!
//! Skipped, with the reason printed, when `redis-server` is not on PATH (fails
//! instead with `CELERIAC_REQUIRE_SERVICES=1`). Never touches the shared Redis.

#[path = "../../celeriac/tests/private_redis/mod.rs"]
mod private_redis;

use std::time::Duration;

use celeriac_broker::redis::{RedisBroker, RedisBrokerOptions};
use celeriac_broker::{Broker, BrokerError, FetchParams, Publish};
use celeriac_core::TaskMessage;
use private_redis::PrivateRedis;
use tokio::time::Instant;

fn publish(id: &str) -> Publish {
    Publish {
        queue: "celery".to_string(),
        envelope: TaskMessage::new("tasks.x", id, vec![], Default::default()).encode(),
        not_before: None,
    }
}

fn params(wait: Duration) -> FetchParams {
    FetchParams {
        queues: vec!["celery".to_string()],
        max: 10,
        wait,
        consumer: "reconnect-test".into(),
        lease: Duration::from_secs(30),
    }
}

async fn broker(server: &PrivateRedis, edit: impl FnOnce(&mut RedisBrokerOptions)) -> RedisBroker {
    let mut options = RedisBrokerOptions::default();
    edit(&mut options);
    RedisBroker::open_url(&server.url(0), options)
        .await
        .expect("open the broker")
}

/// Fetches until a message arrives, retrying errors (as the worker's fetch loop
/// does); the ids fetched.
async fn fetch_until_some(broker: &RedisBroker, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < limit,
            "nothing fetched within {limit:?}"
        );
        match broker.fetch(&params(Duration::from_secs(1))).await {
            Ok(got) if !got.is_empty() => {
                let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
                broker.ack(&tags).await.expect("ack");
                return got
                    .into_iter()
                    .filter_map(|d| d.envelope.task_id_hint().map(str::to_string))
                    .collect();
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_fails_promptly_when_redis_goes_and_the_next_works_when_it_is_back() {
    let Some(mut server) = PrivateRedis::start_or_skip(
        "a_waiting_fetch_fails_promptly_when_redis_goes_and_the_next_works_when_it_is_back",
    ) else {
        return;
    };
    let consumer = broker(&server, |_| {}).await;
    let producer = broker(&server, |_| {}).await;
    // Warm up the waiting connection pool, then wait in BRPOP.
    producer
        .publish(vec![publish("before")])
        .await
        .expect("publish");
    assert_eq!(
        fetch_until_some(&consumer, Duration::from_secs(5)).await,
        ["before"]
    );
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let result = consumer.fetch(&params(Duration::from_secs(30))).await;
            (result, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    server.stop();
    let (result, ended_at) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting fetch ends")
        .expect("join");
    assert!(
        matches!(result, Err(BrokerError::Connection(_))),
        "a connection error, got {result:?}"
    );
    assert!(
        ended_at.saturating_duration_since(stopped_at) < Duration::from_secs(3),
        "the fetch noticed the loss promptly"
    );

    // A publish while Redis is down lands once it is back.
    let publisher = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.publish(vec![publish("during")]).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start_again();
    publisher
        .await
        .expect("join")
        .expect("the publish is retried until Redis is back");
    producer
        .publish(vec![publish("after")])
        .await
        .expect("publish");
    let mut got = fetch_until_some(&consumer, Duration::from_secs(15)).await;
    if got.len() < 2 {
        got.extend(fetch_until_some(&consumer, Duration::from_secs(5)).await);
    }
    assert_eq!(got, ["during", "after"], "each once, in order");
    let stats = producer
        .queue_stats(&["celery".to_string()])
        .await
        .expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_gives_up_after_publish_retry_for() {
    let Some(mut server) =
        PrivateRedis::start_or_skip("a_publish_gives_up_after_publish_retry_for")
    else {
        return;
    };
    let producer = broker(&server, |o| o.publish_retry_for = Duration::from_secs(1)).await;
    server.stop();
    let started = Instant::now();
    let result = producer.publish(vec![publish("lost")]).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(BrokerError::Connection(_))),
        "a connection error, got {result:?}"
    );
    assert!(took < Duration::from_secs(8), "gave up after {took:?}");
    server.start_again();
    // The handle works again by itself.
    producer
        .publish(vec![publish("next")])
        .await
        .expect("publish");
    let stats = producer
        .queue_stats(&["celery".to_string()])
        .await
        .expect("stats");
    assert_eq!(
        stats[0].ready, 1,
        "only the publish that returned Ok is queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_is_not_cut_short_by_the_response_timeout() {
    let Some(server) =
        PrivateRedis::start_or_skip("a_long_wait_is_not_cut_short_by_the_response_timeout")
    else {
        return;
    };
    let consumer = broker(&server, |o| o.response_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let got = consumer
        .fetch(&params(Duration::from_secs(3)))
        .await
        .expect("an empty fetch, not a timeout");
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "waited the whole 3 s"
    );
    // A message arriving late in a long wait is delivered.
    let producer = broker(&server, |_| {}).await;
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        producer.publish(vec![publish("late")]).await
    });
    let got = consumer
        .fetch(&params(Duration::from_secs(10)))
        .await
        .expect("fetch");
    later.await.expect("join").expect("publish");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.task_id_hint(), Some("late"));
}

/// A waiting fetch watches the priority-0 list with `BLMOVE` (taking nothing) and
/// claims from every list at least every 100 ms: a message sent with a priority
/// (another list) while the fetch waits arrives promptly, and one without at once;
/// waiting took nothing out of any list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_takes_messages_of_every_priority_list() {
    let Some(server) =
        PrivateRedis::start_or_skip("a_waiting_fetch_takes_messages_of_every_priority_list")
    else {
        return;
    };
    let broker = broker(&server, |_| {}).await;
    for (id, priority) in [("low", Some(9u8)), ("plain", None)] {
        let waiting = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let got = broker
                    .fetch(&params(Duration::from_secs(4)))
                    .await
                    .expect("fetch");
                (got, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut message = publish(id);
        message.envelope.properties.priority = priority;
        broker.publish(vec![message]).await.expect("publish");
        let (got, waited) = waiting.await.expect("the fetch task");
        let ids: Vec<_> = got
            .iter()
            .map(|d| d.envelope.task_id_hint().unwrap_or_default().to_string())
            .collect();
        assert_eq!(ids, [id], "priority {priority:?}");
        assert!(
            waited < Duration::from_millis(300 + 1000),
            "the {id} message took {waited:?} to arrive"
        );
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&tags).await.expect("ack");
    }
}

/// The claim is pipelined behind the wait on the waiting connection. When Redis has
/// lost its scripts meanwhile (`SCRIPT FLUSH`, as after a restart), the pipelined
/// claim fails with `NOSCRIPT` without running; the fetch then claims the usual way
/// (loading the script) and still returns the message, which is held, not left in
/// the queue, and acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_claims_when_redis_lost_its_scripts() {
    let Some(server) =
        PrivateRedis::start_or_skip("a_waiting_fetch_claims_when_redis_lost_its_scripts")
    else {
        return;
    };
    let broker = broker(&server, |_| {}).await;
    let mut admin = redis::Client::open(server.url(0))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    // A first fetch loads the claim script.
    let got = broker
        .fetch(&params(Duration::from_millis(20)))
        .await
        .expect("fetch");
    assert!(got.is_empty());
    let waiting = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.fetch(&params(Duration::from_secs(4))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    broker
        .publish(vec![publish("after-flush")])
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the wait returns soon after the publish")
        .expect("no panic")
        .expect("the lost script is loaded again, not reported");
    let ids: Vec<_> = got
        .iter()
        .filter_map(|d| d.envelope.task_id_hint())
        .collect();
    assert_eq!(ids, ["after-flush"]);
    let waiting_in_queue: i64 = redis::cmd("LLEN")
        .arg("celery")
        .query_async(&mut admin)
        .await
        .expect("LLEN");
    assert_eq!(
        waiting_in_queue, 0,
        "the message is held, not left in the queue"
    );
    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
    broker.ack(&tags).await.expect("ack");
    let held: i64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut admin)
        .await
        .expect("HLEN");
    assert_eq!(held, 0, "acked");
}
