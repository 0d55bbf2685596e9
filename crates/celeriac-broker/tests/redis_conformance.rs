//! The broker conformance suite against the Redis broker: every test on a fresh
//! `global_keyprefix` of the server at `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), skipped when no server answers (unless
//! `CELERIAC_REQUIRE_SERVICES=1`), plus an ignored throughput check.

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_redis::testing::redis_url_or_skip;

celeriac_broker::broker_conformance_tests!(match redis_url_or_skip("redis_conformance") {
    Some(url) => RedisHarness::new(&url),
    None => return,
});

/// Publishes 100,000 messages in batches of 1,000, then drains them with fetches of
/// 64 and one ack per batch, and prints the rates:
///
/// ```text
/// cargo test --release -p celeriac-broker --test redis_conformance -- --ignored --nocapture
/// ```
#[test]
#[ignore = "throughput check; run in release mode with --ignored --nocapture"]
fn throughput() {
    use std::time::Duration;

    use celeriac_broker::{Broker, FetchParams, Publish};
    use celeriac_core::TaskMessage;
    use tokio::time::Instant;

    celeriac_broker::testing::run("throughput", async {
        const TOTAL: usize = 100_000;
        let Some(url) = redis_url_or_skip("throughput") else {
            return;
        };
        let harness = RedisHarness::new(&url);
        let broker = harness.redis_broker().await;
        let envelope = TaskMessage::new(
            "bench.noop",
            "00000000-0000-0000-0000-000000000000",
            vec![
                serde_json::json!(1),
                serde_json::json!("some argument text"),
            ],
            serde_json::Map::new(),
        )
        .encode();

        let started = Instant::now();
        for _ in 0..TOTAL / 1000 {
            let batch = (0..1000)
                .map(|_| Publish {
                    queue: "bench".into(),
                    envelope: envelope.clone(),
                    not_before: None,
                })
                .collect();
            broker.publish(batch).await.expect("publish");
        }
        let publish = started.elapsed();

        let params = FetchParams {
            queues: vec!["bench".into()],
            max: 64,
            wait: Duration::ZERO,
            consumer: "bench".into(),
            lease: Duration::from_secs(60),
        };
        let started = Instant::now();
        let mut drained = 0;
        loop {
            let got = broker.fetch(&params).await.expect("fetch");
            if got.is_empty() {
                break;
            }
            drained += got.len();
            let tags: Vec<_> = got.into_iter().map(|d| d.tag).collect();
            broker.ack(&tags).await.expect("ack");
        }
        let drain = started.elapsed();
        assert_eq!(drained, TOTAL);
        println!(
            "redis: publish (batches of 1,000): {:.0} msgs/s; fetch(max 64) + ack: {:.0} msgs/s; payload {} bytes",
            TOTAL as f64 / publish.as_secs_f64(),
            TOTAL as f64 / drain.as_secs_f64(),
            envelope.to_kombu_json().len(),
        );
    });
}
