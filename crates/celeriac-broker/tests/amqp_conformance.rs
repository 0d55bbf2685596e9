//! The broker conformance suite against the RabbitMQ broker at
//! `CELERIAC_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672//`), with
//! priority queues (`x-max-priority` 10) whose names are fresh per test and which
//! the harness deletes afterwards. Skipped when RabbitMQ does not answer (unless
//! `CELERIAC_REQUIRE_SERVICES=1`).
//!
//! RabbitMQ has no leases (it redelivers when a channel closes) and no delayed
//! delivery, and keeps no worker registry: the tests of those are skipped, with the
//! reason printed, by capability.

#![cfg(feature = "amqp")]

use celeriac_broker::amqp::testing::{amqp_url_or_skip, AmqpHarness};

celeriac_broker::broker_conformance_tests!(match amqp_url_or_skip("amqp_conformance") {
    Some(url) => AmqpHarness::new(&url),
    None => return,
});

/// Publishes 50,000 messages in confirmed batches of 1,000, then drains them with
/// fetches of 64 and one ack per batch, and prints the rates:
///
/// ```text
/// cargo test --release -p celeriac-broker --features amqp,testing --test amqp_conformance -- --ignored --nocapture
/// ```
#[test]
#[ignore = "throughput check; run in release mode with --ignored --nocapture"]
fn throughput() {
    use std::time::Duration;

    use celeriac_broker::{Broker, FetchParams, Publish};
    use celeriac_core::TaskMessage;
    use tokio::time::Instant;

    celeriac_broker::testing::run("throughput", async {
        const TOTAL: usize = 50_000;
        let Some(url) = amqp_url_or_skip("throughput") else {
            return;
        };
        let harness = AmqpHarness::new(&url);
        let broker = harness.amqp_broker().await;
        let queue = format!("conformance.throughput.{}", uuid::Uuid::new_v4().simple());
        let envelope = TaskMessage::new(
            "bench.noop",
            "00000000-0000-0000-0000-000000000000",
            vec![],
            Default::default(),
        )
        .encode();
        let started = Instant::now();
        for _ in 0..TOTAL / 1000 {
            let batch = (0..1000)
                .map(|_| Publish {
                    queue: queue.clone(),
                    envelope: envelope.clone(),
                    not_before: None,
                })
                .collect();
            broker.publish(batch).await.expect("publish");
        }
        let published = started.elapsed();
        let params = FetchParams {
            queues: vec![queue.clone()],
            max: 64,
            wait: Duration::from_millis(500),
            consumer: "throughput".into(),
            lease: Duration::from_secs(30),
        };
        let started = Instant::now();
        let mut drained = 0;
        while drained < TOTAL {
            let got = broker.fetch(&params).await.expect("fetch");
            drained += got.len();
            let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
            broker.ack(&tags).await.expect("ack");
        }
        let fetched = started.elapsed();
        println!(
            "amqp broker: publish {:.0} msgs/s (batches of 1,000, confirmed), fetch(64) + ack {:.0} msgs/s",
            TOTAL as f64 / published.as_secs_f64(),
            TOTAL as f64 / fetched.as_secs_f64()
        );
    });
}

/// A consumer replaced by a wider one while it has deliveries on their way (each
/// fetch asks for more than the last, each ack frees the narrow consumer's window):
/// every message still comes out in the queue's order.
#[test]
fn widening_the_prefetch_keeps_the_queue_order() {
    use std::time::Duration;

    use celeriac_broker::{Broker, FetchParams, Publish};
    use celeriac_core::TaskMessage;

    celeriac_broker::testing::run("widening_the_prefetch_keeps_the_queue_order", async {
        const TOTAL: usize = 400;
        let Some(url) = amqp_url_or_skip("widening_the_prefetch_keeps_the_queue_order") else {
            return;
        };
        let harness = AmqpHarness::new(&url);
        let broker = harness.amqp_broker().await;
        let queue = format!("conformance.widening.{}", uuid::Uuid::new_v4().simple());
        let batch = (0..TOTAL)
            .map(|i| Publish {
                queue: queue.clone(),
                envelope: TaskMessage::new("t.widen", i.to_string(), vec![], Default::default())
                    .encode(),
                not_before: None,
            })
            .collect();
        broker.publish(batch).await.expect("publish");
        let mut seen = Vec::with_capacity(TOTAL);
        let mut max = 1;
        while seen.len() < TOTAL {
            let got = broker
                .fetch(&FetchParams {
                    queues: vec![queue.clone()],
                    max,
                    wait: Duration::from_secs(5),
                    consumer: "widening".into(),
                    lease: Duration::from_secs(30),
                })
                .await
                .expect("fetch");
            assert!(
                !got.is_empty(),
                "nothing fetched after {} of {TOTAL}",
                seen.len()
            );
            let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
            for delivery in &got {
                let id = delivery.envelope.task_id_hint().expect("a task id");
                seen.push(id.parse::<usize>().expect("a number"));
            }
            broker.ack(&tags).await.expect("ack");
            max = (max * 2).min(256);
        }
        assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>(), "in the queue's order");
    });
}
