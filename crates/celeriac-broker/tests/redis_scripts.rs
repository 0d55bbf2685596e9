//! Each Lua script of the Redis broker against a real Redis: seed the keys, run the
//! script, assert the end state. Every test uses its own key prefix (deleted
//! afterwards) and is skipped when no Redis answers (unless
//! `CELERIAC_REQUIRE_SERVICES=1`).

use celeriac_broker::redis::scripts;
use celeriac_broker::redis::testing::RedisHarness;
use celeriac_redis::keys::BrokerKeys;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};

struct Fixture {
    _harness: RedisHarness,
    conn: MultiplexedConnection,
    k: BrokerKeys,
}

async fn fixture(test: &str) -> Option<Fixture> {
    let url = celeriac_redis::testing::redis_url_or_skip(test)?;
    let harness = RedisHarness::new(&url);
    Some(Fixture {
        conn: harness.connection().await,
        k: harness.keys(),
        _harness: harness,
    })
}

/// A minimal kombu envelope with delivery tag `tag`, routed to `queue`.
fn envelope(tag: &str, queue: &str) -> String {
    serde_json::json!({
        "body": "W1tdLCB7fSwge31d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "t", "id": tag},
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    })
    .to_string()
}

/// The same envelope, marked as kombu marks a restored message.
fn redelivered(tag: &str, queue: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&envelope(tag, queue)).expect("json");
    value["headers"]["redelivered"] = true.into();
    value["properties"]["delivery_info"]["redelivered"] = true.into();
    value.to_string()
}

/// `[envelope, "", queue]`, as `claim.lua` and kombu write `unacked`.
fn unacked_value(envelope: &str, queue: &str) -> String {
    format!("[{envelope},\"\",\"{queue}\"]")
}

async fn server_ms(conn: &mut MultiplexedConnection) -> f64 {
    let (s, us): (i64, i64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .expect("redis command");
    (s * 1000) as f64 + us as f64 / 1000.0
}

type Claimed = Vec<(usize, String, String, String, u32)>;

impl Fixture {
    /// Runs `claim.lua` over `lists` (list key, queue name).
    async fn claim(
        &mut self,
        lists: &[(String, &str)],
        max: usize,
        lease_ms: i64,
        popped: Option<(usize, &str)>,
    ) -> Claimed {
        let claim = NEXT_CLAIM.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.claim_numbered(claim, lists, max, lease_ms, popped)
            .await
    }

    /// [`Fixture::claim`] with a given claim number.
    async fn claim_numbered(
        &mut self,
        claim: u64,
        lists: &[(String, &str)],
        max: usize,
        lease_ms: i64,
        popped: Option<(usize, &str)>,
    ) -> Claimed {
        let k = &self.k;
        let script = Script::new(scripts::CLAIM);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(&k.holders)
            .key(&k.deliveries)
            .key(k.lost_claim(claim))
            .key(&k.dead_letters)
            .key(&k.dead_letter_counts);
        for (list, _) in lists {
            invocation.key(list);
        }
        invocation.arg(max).arg(lease_ms).arg(claim);
        match popped {
            Some((i, element)) => invocation.arg(i).arg(element),
            None => invocation.arg(0).arg(""),
        };
        for (_, queue) in lists {
            invocation.arg(*queue);
        }
        invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("redis command")
    }

    /// Holds one message `tag` of queue `q` through `claim.lua`; returns its token.
    async fn hold(&mut self, tag: &str, q: &str, lease_ms: i64) -> String {
        let list = self.k.queue(q, 0);
        let _: () = self
            .conn
            .lpush(&list, envelope(tag, q))
            .await
            .expect("redis command");
        let got = self.claim(&[(list, q)], 1, lease_ms, None).await;
        assert_eq!(got.len(), 1);
        got[0].3.clone()
    }

    async fn hget(&mut self, key: &str, field: &str) -> Option<String> {
        self.conn.hget(key, field).await.expect("redis command")
    }

    async fn zscore(&mut self, key: &str, member: &str) -> Option<f64> {
        self.conn.zscore(key, member).await.expect("redis command")
    }

    async fn list(&mut self, key: &str) -> Vec<String> {
        self.conn.lrange(key, 0, -1).await.expect("redis command")
    }

    /// Whether any trace of a hold of `tag` is left (unacked, index, lease, holder).
    async fn traces(&mut self, tag: &str) -> (bool, bool, bool, bool) {
        let k = self.k.clone();
        (
            self.hget(&k.unacked, tag).await.is_some(),
            self.zscore(&k.unacked_index, tag).await.is_some(),
            self.zscore(&k.leases, tag).await.is_some(),
            self.hget(&k.holders, tag).await.is_some(),
        )
    }

    async fn ack(&mut self, pairs: &[(&str, &str)]) -> i64 {
        let k = &self.k;
        let script = Script::new(scripts::ACK);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(&k.holders)
            .key(&k.deliveries);
        for (tag, token) in pairs {
            invocation.arg(*tag).arg(*token);
        }
        invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("redis command")
    }
}

/// Claim numbers for the fixture's claims (each call its own, as the broker does).
static NEXT_CLAIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

const HELD: (bool, bool, bool, bool) = (true, true, true, true);
const GONE: (bool, bool, bool, bool) = (false, false, false, false);

#[tokio::test]
async fn claim_records_what_kombu_records_and_a_lease() {
    let Some(mut fx) = fixture("claim_records_what_kombu_records_and_a_lease").await else {
        return;
    };
    let k = fx.k.clone();
    let (q0, q3) = (k.queue("q", 0), k.queue("q", 3));
    let a = envelope("tag-a", "q");
    let b = envelope("tag-b", "q");
    let c = envelope("tag-c", "q");
    let _: () = fx.conn.lpush(&q0, &[&a, &b]).await.expect("redis command");
    let _: () = fx.conn.lpush(&q3, &c).await.expect("redis command");

    let before = server_ms(&mut fx.conn).await;
    let got = fx
        .claim(&[(q0.clone(), "q"), (q3.clone(), "q")], 2, 30_000, None)
        .await;
    let after = server_ms(&mut fx.conn).await;

    // Oldest first, from the first list; the third message stays.
    let taken: Vec<_> = got
        .iter()
        .map(|r| (r.0, r.1.as_str(), r.2.as_str(), r.4))
        .collect();
    assert_eq!(
        taken,
        [(1, a.as_str(), "tag-a", 1), (1, b.as_str(), "tag-b", 1)]
    );
    assert_eq!(fx.list(&q0).await, Vec::<String>::new());
    assert_eq!(fx.list(&q3).await, std::slice::from_ref(&c));

    // kombu's ack emulation, byte for byte: the element verbatim.
    assert_eq!(
        fx.hget(&k.unacked, "tag-a").await.as_deref(),
        Some(unacked_value(&a, "q").as_str())
    );
    let index = fx
        .zscore(&k.unacked_index, "tag-a")
        .await
        .expect("redis command")
        * 1000.0;
    assert!(
        index >= before - 1.0 && index <= after + 1.0,
        "{before} <= {index} <= {after}"
    );
    let lease = fx.zscore(&k.leases, "tag-a").await.expect("redis command");
    assert!(lease >= before.floor() + 30_000.0 - 1.0 && lease <= after + 30_000.0);

    // Fresh tokens, recorded with the delivery count and the queue.
    let tokens: Vec<u64> = got
        .iter()
        .map(|r| r.3.parse().expect("a numeric token"))
        .collect();
    assert_eq!(tokens[1], tokens[0] + 1);
    assert_eq!(
        fx.hget(&k.holders, "tag-b").await,
        Some(format!("{} 1 q", tokens[1]))
    );
    assert_eq!(
        tokens[0] / 1000,
        tokens[1] / 1000,
        "the tokens of one claim are its claim number * 1000 + k"
    );

    // The next claim takes the priority-3 list.
    let got = fx
        .claim(&[(q0, "q"), (q3.clone(), "q")], 5, 30_000, None)
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].2.as_str()), (2, "tag-c"));
    assert_eq!(fx.list(&q3).await, Vec::<String>::new());
}

#[tokio::test]
async fn claim_records_a_popped_element_first() {
    let Some(mut fx) = fixture("claim_records_a_popped_element_first").await else {
        return;
    };
    let k = fx.k.clone();
    let (a, b) = (k.queue("a", 0), k.queue("b", 0));
    let waiting = envelope("tag-waiting", "a");
    let popped = envelope("tag-popped", "b");
    let _: () = fx.conn.lpush(&a, &waiting).await.expect("redis command");

    let got = fx
        .claim(&[(a, "a"), (b, "b")], 1, 30_000, Some((2, &popped)))
        .await;
    assert_eq!(got.len(), 1, "the popped element counts towards max");
    assert_eq!((got[0].0, got[0].2.as_str()), (2, "tag-popped"));
    assert_eq!(
        fx.hget(&k.holders, "tag-popped").await,
        Some(format!("{} 1 b", got[0].3))
    );
    assert_eq!(fx.traces("tag-waiting").await, GONE);
}

#[tokio::test]
async fn claim_counts_deliveries() {
    let Some(mut fx) = fixture("claim_counts_deliveries").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let _: () = fx
        .conn
        .hset(&k.deliveries, "tag-counted", 3)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .lpush(
            &list,
            &[
                envelope("tag-counted", "q"),
                redelivered("tag-kombu", "q"),
                envelope("tag-new", "q"),
            ],
        )
        .await
        .expect("redis command");
    let got = fx.claim(&[(list, "q")], 10, 30_000, None).await;
    let counts: Vec<_> = got.iter().map(|r| (r.2.as_str(), r.4)).collect();
    assert_eq!(
        counts,
        [("tag-counted", 4), ("tag-kombu", 2), ("tag-new", 1)],
        "celeriac's count + 1, else 2 when kombu marked it redelivered, else 1"
    );
}

/// `claim.lua` reads the tag and delivery_info from the text of the envelopes kombu
/// and celeriac write (no cjson decode); every other shape takes the full decode. Both
/// roads must record the same thing.
#[tokio::test]
async fn claim_reads_every_envelope_shape_alike() {
    let Some(mut fx) = fixture("claim_reads_every_envelope_shape_alike").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let cases: [(&str, String, &str, &str, u32); 7] = [
        // Python's json.dumps: ", " and ": " separators, delivery_info before the tag.
        (
            "tag-py",
            r#"{"body": "W10=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"task": "t", "id": "tag-py"}, "properties": {"correlation_id": "x", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "tag-py"}}"#.to_string(),
            "",
            "celery",
            1,
        ),
        // Compact, kombu-restored (redelivered), a named exchange.
        (
            "tag-compact",
            r#"{"body":"W10=","headers":{"redelivered":true},"properties":{"delivery_tag":"tag-compact","delivery_info":{"exchange":"ex","routing_key":"rk","redelivered":true}}}"#.to_string(),
            "ex",
            "rk",
            2,
        ),
        // A user header named like the keys claim reads: the full decode decides.
        (
            "tag-nested",
            r#"{"body":"W10=","headers":{"delivery_tag":"not-me","delivery_info":{"exchange":"no","routing_key":"no"}},"properties":{"delivery_info":{"exchange":"","routing_key":"q2"},"delivery_tag":"tag-nested"}}"#.to_string(),
            "",
            "q2",
            1,
        ),
        // A routing key with escapes and braces.
        (
            "tag-escaped",
            r#"{"body":"W10=","properties":{"delivery_info":{"exchange":"","routing_key":"a\"b}{c"},"delivery_tag":"tag-escaped"}}"#.to_string(),
            "",
            "a\"b}{c",
            1,
        ),
        // A tag with an escape.
        (
            "tag-\"q\"",
            r#"{"body":"W10=","properties":{"delivery_tag":"tag-\"q\"","delivery_info":{"exchange":"","routing_key":"q"}}}"#.to_string(),
            "",
            "q",
            1,
        ),
        // Look-alikes of the names claim searches for: another "_tag" key, the
        // string "delivery_info" as a value.
        (
            "tag-lookalike",
            r#"{"body":"W10=","headers":{"my_tag":"zz","note":"delivery_info","x_info":1},"properties":{"delivery_tag":"tag-lookalike","delivery_info":{"exchange":"","routing_key":"q3"}}}"#.to_string(),
            "",
            "q3",
            1,
        ),
        // No delivery_info at all: the queue is the routing key.
        (
            "tag-bare",
            r#"{"body":"W10=","properties":{"delivery_tag":"tag-bare"}}"#.to_string(),
            "",
            "q",
            1,
        ),
    ];
    for (_, raw, _, _, _) in &cases {
        let _: () = fx.conn.lpush(&list, raw).await.expect("redis command");
    }
    let got = fx.claim(&[(list, "q")], 10, 30_000, None).await;
    assert_eq!(got.len(), cases.len(), "nothing dead-lettered");
    for ((tag, raw, exchange, routing_key, count), row) in cases.iter().zip(&got) {
        assert_eq!(
            (row.1.as_str(), row.2.as_str(), row.4),
            (raw.as_str(), *tag, *count)
        );
        let entry = fx.hget(&k.unacked, tag).await.expect("an unacked entry");
        let (envelope, ex, rk): (serde_json::Value, String, String) =
            serde_json::from_str(&entry).expect("[envelope, exchange, routing_key]");
        assert_eq!(
            envelope,
            serde_json::from_str::<serde_json::Value>(raw).expect("json")
        );
        assert_eq!(
            (ex.as_str(), rk.as_str()),
            (*exchange, *routing_key),
            "{tag}"
        );
    }
}

#[tokio::test]
async fn claim_dead_letters_what_is_not_an_envelope() {
    let Some(mut fx) = fixture("claim_dead_letters_what_is_not_an_envelope").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let bad: [&[u8]; 4] = [
        b"not json at all \xff",
        b"[1, 2, 3]",
        br#"{"body": "x", "properties": {}}"#,
        br#"{"properties": {"delivery_tag": "t"}}"#,
    ];
    for element in bad {
        let _: () = fx.conn.lpush(&list, element).await.expect("redis command");
    }
    let good = envelope("tag-good", "q");
    let _: () = fx.conn.lpush(&list, &good).await.expect("redis command");

    let got = fx.claim(&[(list.clone(), "q")], 1, 30_000, None).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].2, "tag-good",
        "malformed elements do not block the good one"
    );
    assert_eq!(fx.list(&list).await, Vec::<String>::new());

    let records: Vec<String> = fx
        .conn
        .lrange(&k.dead_letters, 0, -1)
        .await
        .expect("redis command");
    assert_eq!(records.len(), 4);
    let count: u64 = fx
        .conn
        .hget(&k.dead_letter_counts, "q")
        .await
        .expect("redis command");
    assert_eq!(count, 4);
    // Newest first: the last one popped is at the head.
    for (record, raw) in records.iter().rev().zip(bad) {
        let record: serde_json::Value = serde_json::from_str(record).expect("a JSON record");
        assert_eq!(record["queue"], "q");
        assert!(record["reason"]
            .as_str()
            .expect("a reason")
            .starts_with("not a kombu envelope"));
        assert!(record["at"].as_f64().expect("a time") > 1.7e12);
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(record["payload_base64"].as_str().expect("a payload"))
            .expect("base64");
        assert_eq!(payload, raw, "the dead letter keeps the exact bytes");
    }
    let ids: std::collections::HashSet<_> = records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).expect("json")["id"].clone())
        .collect();
    assert_eq!(ids.len(), 4, "unique ids");
}

#[tokio::test]
async fn ack_removes_the_hold_of_its_delivery_only() {
    let Some(mut fx) = fixture("ack_removes_the_hold_of_its_delivery_only").await else {
        return;
    };
    let k = fx.k.clone();
    let token = fx.hold("tag", "q", 30_000).await;
    let _: () = fx
        .conn
        .hset(&k.deliveries, "tag", 1)
        .await
        .expect("redis command");

    assert_eq!(
        fx.ack(&[("tag", "999999")]).await,
        0,
        "another token is stale"
    );
    assert_eq!(fx.traces("tag").await, HELD);
    assert_eq!(fx.ack(&[("tag", &token), ("other", &token)]).await, 1);
    assert_eq!(fx.traces("tag").await, GONE);
    assert_eq!(fx.hget(&k.deliveries, "tag").await, None);
    assert_eq!(
        fx.ack(&[("tag", &token)]).await,
        0,
        "a second ack is a no-op"
    );
}

#[tokio::test]
async fn ack_leaves_a_message_a_kombu_consumer_took_again() {
    let Some(mut fx) = fixture("ack_leaves_a_message_a_kombu_consumer_took_again").await else {
        return;
    };
    let k = fx.k.clone();
    let token = fx.hold("tag", "q", 1_000).await;
    // A kombu restore and a Python worker's delivery after our lease ended: a later
    // delivery time than our lease deadline.
    let lease = fx.zscore(&k.leases, "tag").await.expect("redis command");
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, "tag", (lease + 5_000.0) / 1000.0)
        .await
        .expect("redis command");
    assert_eq!(fx.ack(&[("tag", &token)]).await, 0);
    assert!(fx.hget(&k.unacked, "tag").await.is_some());
    assert!(fx.zscore(&k.unacked_index, "tag").await.is_some());
}

#[tokio::test]
async fn renew_extends_the_lease_and_the_kombu_delivery_time() {
    let Some(mut fx) = fixture("renew_extends_the_lease_and_the_kombu_delivery_time").await else {
        return;
    };
    let k = fx.k.clone();
    let token = fx.hold("tag", "q", 1_000).await;
    // Pretend the delivery is old, as kombu's scan would see it.
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, "tag", 1_000.0)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zadd(&k.leases, "tag", 1_000_000.0)
        .await
        .expect("redis command");

    let renew = |fx: &mut Fixture, pairs: Vec<(String, String)>| {
        let k = fx.k.clone();
        let mut conn = fx.conn.clone();
        async move {
            let script = Script::new(scripts::RENEW);
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&k.unacked_index)
                .key(&k.leases)
                .key(&k.holders)
                .arg(60_000);
            for (tag, token) in &pairs {
                invocation.arg(tag).arg(token);
            }
            invocation
                .invoke_async::<i64>(&mut conn)
                .await
                .expect("redis command")
        }
    };
    assert_eq!(
        renew(&mut fx, vec![("tag".into(), "424242".into())]).await,
        0,
        "stale token"
    );
    assert_eq!(fx.zscore(&k.leases, "tag").await, Some(1_000_000.0));

    let before = server_ms(&mut fx.conn).await;
    assert_eq!(
        renew(
            &mut fx,
            vec![("tag".into(), token.clone()), ("absent".into(), token)]
        )
        .await,
        1
    );
    let lease = fx.zscore(&k.leases, "tag").await.expect("redis command");
    assert!(
        lease >= before.floor() + 60_000.0 - 1.0,
        "{lease} vs {before}"
    );
    let index = fx
        .zscore(&k.unacked_index, "tag")
        .await
        .expect("redis command")
        * 1000.0;
    assert!(index >= before - 1.0, "delivery time moved to now");
    assert_eq!(
        fx.zscore(&k.unacked_index, "absent").await,
        None,
        "XX: never added"
    );
}

async fn requeue(fx: &mut Fixture, tag: &str, token: &str, target: &str, mode: &str) -> i64 {
    let k = fx.k.clone();
    Script::new(scripts::REQUEUE)
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.holders)
        .key(&k.deliveries)
        .key(target)
        .arg(tag)
        .arg(token)
        .arg(redelivered(tag, "q"))
        .arg(mode)
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command")
}

#[tokio::test]
async fn requeue_goes_to_the_back_and_release_to_the_front() {
    let Some(mut fx) = fixture("requeue_goes_to_the_back_and_release_to_the_front").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let token = fx.hold("tag", "q", 30_000).await;
    let _: () = fx
        .conn
        .lpush(&list, &[envelope("x", "q"), envelope("y", "q")])
        .await
        .expect("redis command");

    assert_eq!(
        requeue(&mut fx, "tag", "1000000", &list, "requeue").await,
        0
    );
    assert_eq!(
        fx.traces("tag").await,
        HELD,
        "a stale token changes nothing"
    );

    assert_eq!(requeue(&mut fx, "tag", &token, &list, "requeue").await, 1);
    assert_eq!(fx.traces("tag").await, GONE);
    // LPUSH: at the head, i.e. the back of the queue (consumers RPOP the tail).
    assert_eq!(
        fx.list(&list).await,
        [
            redelivered("tag", "q"),
            envelope("y", "q"),
            envelope("x", "q")
        ]
    );
    assert_eq!(fx.hget(&k.deliveries, "tag").await.as_deref(), Some("1"));

    // Taken again (count 2), then released: to the tail (front), count taken back.
    let _: String = fx.conn.lpop(&list, None).await.expect("redis command");
    let _: () = fx
        .conn
        .rpush(&list, redelivered("tag", "q"))
        .await
        .expect("redis command");
    let got = fx.claim(&[(list.clone(), "q")], 1, 30_000, None).await;
    assert_eq!((got[0].2.as_str(), got[0].4), ("tag", 2));
    assert_eq!(
        requeue(&mut fx, "tag", &got[0].3, &list, "release").await,
        1
    );
    assert_eq!(
        fx.list(&list).await,
        [
            envelope("y", "q"),
            envelope("x", "q"),
            redelivered("tag", "q")
        ]
    );
    assert_eq!(fx.hget(&k.deliveries, "tag").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn dead_letter_moves_the_message_and_counts_it() {
    let Some(mut fx) = fixture("dead_letter_moves_the_message_and_counts_it").await else {
        return;
    };
    let k = fx.k.clone();
    let token = fx.hold("tag", "q", 30_000).await;
    let run = |fx: &mut Fixture, token: String| {
        let k = fx.k.clone();
        let mut conn = fx.conn.clone();
        async move {
            Script::new(scripts::DEAD_LETTER)
                .key(&k.unacked)
                .key(&k.unacked_index)
                .key(&k.leases)
                .key(&k.holders)
                .key(&k.deliveries)
                .key(&k.dead_letters)
                .key(&k.dead_letter_counts)
                .arg("tag")
                .arg(token)
                .arg(r#"{"id":"1","queue":"q","reason":"r","at":1,"payload":"p"}"#)
                .arg("q")
                .invoke_async::<i64>(&mut conn)
                .await
                .expect("redis command")
        }
    };
    assert_eq!(run(&mut fx, "123456789".into()).await, 0);
    assert_eq!(fx.traces("tag").await, HELD);
    assert_eq!(run(&mut fx, token).await, 1);
    assert_eq!(fx.traces("tag").await, GONE);
    assert_eq!(
        fx.list(&k.dead_letters).await,
        [r#"{"id":"1","queue":"q","reason":"r","at":1,"payload":"p"}"#]
    );
    assert_eq!(
        fx.hget(&k.dead_letter_counts, "q").await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn restore_expired_puts_lapsed_messages_in_front() {
    let Some(mut fx) = fixture("restore_expired_puts_lapsed_messages_in_front").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    fx.hold("lapsed", "q", 0).await;
    fx.hold("alive", "q", 60_000).await;
    fx.hold("renewed", "q", 0).await;
    fx.hold("retaken", "q", 0).await;
    fx.hold("orphan", "q", 0).await;
    let _: () = fx
        .conn
        .lpush(&list, envelope("waiting", "q"))
        .await
        .expect("redis command");
    // "renewed" got a new lease after the caller read its holder.
    let later = server_ms(&mut fx.conn).await + 60_000.0;
    let _: () = fx
        .conn
        .zadd(&k.leases, "renewed", later)
        .await
        .expect("redis command");
    // "retaken": restored by a kombu scan and taken by a Python worker later.
    let lease = fx
        .zscore(&k.leases, "retaken")
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, "retaken", (lease + 10_000.0) / 1000.0)
        .await
        .expect("redis command");
    // "orphan": restored by a kombu scan, still in its queue.
    let _: () = fx
        .conn
        .hdel(&k.unacked, "orphan")
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zrem(&k.unacked_index, "orphan")
        .await
        .expect("redis command");
    // A lease left without a holder.
    let _: () = fx
        .conn
        .zadd(&k.leases, "stray", 1.0)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .hset(&k.unacked, "stray", "x")
        .await
        .expect("redis command");

    let mut holders = std::collections::HashMap::new();
    for tag in ["lapsed", "alive", "renewed", "retaken", "orphan"] {
        holders.insert(tag, fx.hget(&k.holders, tag).await.expect("redis command"));
    }
    let script = Script::new(scripts::RESTORE_EXPIRED);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.holders)
        .key(&k.deliveries)
        .key(&k.dead_letters)
        .key(&k.dead_letter_counts);
    for tag in ["lapsed", "alive", "renewed", "retaken", "orphan"] {
        invocation
            .key(&list)
            .arg(tag)
            .arg(&holders[tag])
            .arg("push")
            .arg(redelivered(tag, "q"));
    }
    invocation
        .key(&k.leases)
        .arg("stray")
        .arg("")
        .arg("drop")
        .arg("");
    let restored: i64 = invocation
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(restored, 1);

    assert_eq!(
        fx.list(&list).await,
        [envelope("waiting", "q"), redelivered("lapsed", "q")],
        "RPUSH: the lapsed message is served next"
    );
    assert_eq!(fx.traces("lapsed").await, GONE);
    assert_eq!(fx.hget(&k.deliveries, "lapsed").await.as_deref(), Some("1"));
    assert_eq!(fx.traces("alive").await, HELD);
    assert_eq!(fx.traces("renewed").await, HELD);
    assert_eq!(
        fx.traces("retaken").await,
        (true, true, false, false),
        "the Python worker's hold stays; celeriac's entries go"
    );
    assert_eq!(fx.traces("orphan").await, GONE);
    assert_eq!(fx.hget(&k.deliveries, "orphan").await.as_deref(), Some("1"));
    assert_eq!(fx.zscore(&k.leases, "stray").await, None);
    assert_eq!(
        fx.hget(&k.unacked, "stray").await.as_deref(),
        Some("x"),
        "left to the visibility scan"
    );
}

#[tokio::test]
async fn restore_expired_dead_letters_an_unusable_entry() {
    let Some(mut fx) = fixture("restore_expired_dead_letters_an_unusable_entry").await else {
        return;
    };
    let k = fx.k.clone();
    fx.hold("tag", "q", 0).await;
    let holder = fx.hget(&k.holders, "tag").await.expect("redis command");
    let restored: i64 = Script::new(scripts::RESTORE_EXPIRED)
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.holders)
        .key(&k.deliveries)
        .key(&k.dead_letters)
        .key(&k.dead_letter_counts)
        .key(&k.leases)
        .arg("tag")
        .arg(holder)
        .arg("dead")
        .arg("{\"record\":1}")
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(restored, 0);
    assert_eq!(fx.traces("tag").await, GONE);
    assert_eq!(fx.list(&k.dead_letters).await, ["{\"record\":1}"]);
    assert_eq!(
        fx.hget(&k.dead_letter_counts, "q").await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn restore_visible_restores_old_entries_without_a_lease() {
    let Some(mut fx) = fixture("restore_visible_restores_old_entries_without_a_lease").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let now_s = server_ms(&mut fx.conn).await / 1000.0;
    // As a Python worker records its holds: no celeriac lease.
    let python = |tag: &str| unacked_value(&envelope(tag, "q"), "q");
    for (tag, age_s) in [
        ("old", 7200.0),
        ("young", 10.0),
        ("changed", 7200.0),
        ("broken", 7200.0),
    ] {
        let _: () = fx
            .conn
            .hset(&k.unacked, tag, python(tag))
            .await
            .expect("redis command");
        let _: () = fx
            .conn
            .zadd(&k.unacked_index, tag, now_s - age_s)
            .await
            .expect("redis command");
    }
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, "no-entry", now_s - 7200.0)
        .await
        .expect("redis command");
    // Held by a celeriac consumer (a lease): never restored by this scan.
    fx.hold("leased", "q", 60_000).await;
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, "leased", now_s - 7200.0)
        .await
        .expect("redis command");
    let leased = fx.hget(&k.unacked, "leased").await.expect("redis command");

    let script = Script::new(scripts::RESTORE_VISIBLE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.dead_letters)
        .key(&k.dead_letter_counts)
        .arg(3_600_000);
    let items: [(&str, String, &str, String); 6] = [
        ("old", python("old"), "push", redelivered("old", "q")),
        ("young", python("young"), "push", redelivered("young", "q")),
        (
            "changed",
            "[stale read]".into(),
            "push",
            redelivered("changed", "q"),
        ),
        ("broken", python("broken"), "dead", "{\"dead\":1}".into()),
        ("no-entry", String::new(), "drop", String::new()),
        ("leased", leased, "push", redelivered("leased", "q")),
    ];
    for (tag, expected, mode, payload) in &items {
        invocation
            .key(&list)
            .arg(*tag)
            .arg(expected)
            .arg(*mode)
            .arg(payload)
            .arg("q");
    }
    let (restored, acted): (i64, i64) = invocation
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!((restored, acted), (1, 3));

    assert_eq!(fx.list(&list).await, [redelivered("old", "q")]);
    assert_eq!(fx.hget(&k.unacked, "old").await, None);
    assert_eq!(fx.zscore(&k.unacked_index, "old").await, None);
    assert!(
        fx.hget(&k.unacked, "young").await.is_some(),
        "not old enough"
    );
    assert!(
        fx.hget(&k.unacked, "changed").await.is_some(),
        "changed since read"
    );
    assert_eq!(fx.hget(&k.unacked, "broken").await, None);
    assert_eq!(fx.list(&k.dead_letters).await, ["{\"dead\":1}"]);
    assert_eq!(fx.zscore(&k.unacked_index, "no-entry").await, None);
    assert_eq!(fx.traces("leased").await, HELD);
}

#[tokio::test]
async fn unlock_releases_only_its_own_lock() {
    let Some(mut fx) = fixture("unlock_releases_only_its_own_lock").await else {
        return;
    };
    let k = fx.k.clone();
    let _: () = fx
        .conn
        .set(&k.unacked_mutex, "theirs")
        .await
        .expect("redis command");
    let unlock = Script::new(scripts::UNLOCK);
    let released: i64 = unlock
        .key(&k.unacked_mutex)
        .arg("ours")
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(released, 0);
    assert_eq!(
        fx.conn
            .get::<_, Option<String>>(&k.unacked_mutex)
            .await
            .expect("redis command")
            .as_deref(),
        Some("theirs")
    );
    let released: i64 = unlock
        .key(&k.unacked_mutex)
        .arg("theirs")
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(released, 1);
    assert!(!fx
        .conn
        .exists::<_, bool>(&k.unacked_mutex)
        .await
        .expect("redis command"));
}

#[tokio::test]
async fn purge_deletes_every_priority_list() {
    let Some(mut fx) = fixture("purge_deletes_every_priority_list").await else {
        return;
    };
    let k = fx.k.clone();
    let lists = k.queue_lists("q");
    for (i, list) in lists.iter().enumerate() {
        for n in 0..=i {
            let _: () = fx
                .conn
                .lpush(list, format!("m{n}"))
                .await
                .expect("redis command");
        }
    }
    let _: () = fx
        .conn
        .lpush(k.queue("other", 0), "keep")
        .await
        .expect("redis command");
    let script = Script::new(scripts::PURGE);
    let mut invocation = script.prepare_invoke();
    for list in &lists {
        invocation.key(list);
    }
    let purged: i64 = invocation
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(purged, 1 + 2 + 3 + 4);
    for list in &lists {
        assert!(!fx
            .conn
            .exists::<_, bool>(list)
            .await
            .expect("redis command"));
    }
    assert_eq!(fx.list(&k.queue("other", 0)).await, ["keep"]);
}

#[tokio::test]
async fn a_claim_marked_lost_takes_nothing() {
    let Some(mut fx) = fixture("a_claim_marked_lost_takes_nothing").await else {
        return;
    };
    let k = fx.k.clone();
    let q0 = k.queue("q", 0);
    let a = envelope("tag-a", "q");
    let _: () = fx.conn.lpush(&q0, &a).await.expect("redis command");
    // The client lost this claim's reply and fenced it off before the script ran
    // (a stalled server executing a buffered request late).
    let _: () = fx
        .conn
        .set(k.lost_claim(999_001), 1)
        .await
        .expect("redis command");
    let got = fx
        .claim_numbered(999_001, &[(q0.clone(), "q")], 5, 30_000, None)
        .await;
    assert!(got.is_empty(), "a fenced claim holds nothing: {got:?}");
    assert_eq!(
        fx.list(&q0).await,
        std::slice::from_ref(&a),
        "the message stays queued"
    );
    assert_eq!(fx.hget(&k.holders, "tag-a").await, None);
    // Another claim takes it, with tokens of its own number.
    let got = fx
        .claim_numbered(999_002, &[(q0.clone(), "q")], 5, 30_000, None)
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, "999002001");
}
