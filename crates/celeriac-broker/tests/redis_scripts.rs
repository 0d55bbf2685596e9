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

/// What a claim took: (list index, element, hold id).
type Claimed = Vec<(usize, String, String)>;

impl Fixture {
    /// Runs `claim.lua` over `lists` (list key, queue name).
    async fn claim(&mut self, lists: &[(String, &str)], max: usize, lease_ms: i64) -> Claimed {
        let claim = NEXT_CLAIM.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.claim_numbered(claim, lists, max, lease_ms).await
    }

    /// [`Fixture::claim`] with a given claim number.
    async fn claim_numbered(
        &mut self,
        claim: u64,
        lists: &[(String, &str)],
        max: usize,
        lease_ms: i64,
    ) -> Claimed {
        let k = &self.k;
        let script = Script::new(scripts::CLAIM);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(k.lost_claim(claim))
            .key(&k.dead_letters)
            .key(&k.dead_letter_counts);
        for (list, _) in lists {
            invocation.key(list);
        }
        invocation.arg(max).arg(lease_ms).arg(claim);
        for (_, queue) in lists {
            invocation.arg(serde_json::to_string(queue).expect("json"));
        }
        let rows: Vec<(usize, String)> = invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("redis command");
        (1..)
            .zip(rows)
            .map(|(k, (i, raw))| (i, raw, (claim * 1000 + k).to_string()))
            .collect()
    }

    /// Holds one message `tag` of queue `q` through `claim.lua`; returns its hold id.
    async fn hold(&mut self, tag: &str, q: &str, lease_ms: i64) -> String {
        let list = self.k.queue(q, 0);
        let _: () = self
            .conn
            .lpush(&list, envelope(tag, q))
            .await
            .expect("redis command");
        let got = self.claim(&[(list, q)], 1, lease_ms).await;
        assert_eq!(got.len(), 1);
        got[0].2.clone()
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

    /// Which traces of hold `hold` are left: (unacked, unacked_index, lease).
    async fn traces(&mut self, hold: &str) -> (bool, bool, bool) {
        let k = self.k.clone();
        (
            self.hget(&k.unacked, hold).await.is_some(),
            self.zscore(&k.unacked_index, hold).await.is_some(),
            self.zscore(&k.leases, hold).await.is_some(),
        )
    }

    async fn ack(&mut self, holds: &[&str]) -> i64 {
        let k = &self.k;
        let script = Script::new(scripts::ACK);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases);
        for hold in holds {
            invocation.arg(*hold);
        }
        invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("redis command")
    }
}

/// Claim numbers for the fixture's claims (each call its own, as the broker does).
static NEXT_CLAIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

const HELD: (bool, bool, bool) = (true, true, true);
const GONE: (bool, bool, bool) = (false, false, false);

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
        .claim_numbered(77, &[(q0.clone(), "q"), (q3.clone(), "q")], 2, 30_000)
        .await;
    let after = server_ms(&mut fx.conn).await;

    // Oldest first, from the first list, held as claim * 1000 + k; the third stays.
    assert_eq!(
        got,
        [
            (1, a.clone(), "77001".to_string()),
            (1, b.clone(), "77002".to_string())
        ]
    );
    assert_eq!(fx.list(&q0).await, Vec::<String>::new());
    assert_eq!(fx.list(&q3).await, std::slice::from_ref(&c));

    // kombu's ack emulation: the element verbatim, the anonymous exchange and the
    // queue it came from (where any kombu restore puts it back).
    assert_eq!(
        fx.hget(&k.unacked, "77001").await.as_deref(),
        Some(unacked_value(&a, "q").as_str())
    );
    let index = fx
        .zscore(&k.unacked_index, "77001")
        .await
        .expect("redis command")
        * 1000.0;
    assert!(
        index >= before - 1.0 && index <= after + 1.0,
        "{before} <= {index} <= {after}"
    );
    let lease = fx.zscore(&k.leases, "77001").await.expect("redis command");
    assert!(lease >= before.floor() + 30_000.0 - 1.0 && lease <= after + 30_000.0);
    assert_eq!(fx.traces("77002").await, HELD);
    assert_eq!(
        fx.hget(&k.unacked, "tag-a").await,
        None,
        "nothing keyed by the kombu tag"
    );

    // The next claim takes the priority-3 list.
    let got = fx
        .claim_numbered(78, &[(q0, "q"), (q3.clone(), "q")], 5, 30_000)
        .await;
    assert_eq!(got, [(2, c, "78001".to_string())]);
    assert_eq!(fx.list(&q3).await, Vec::<String>::new());
}

/// `claim.lua` does not read the envelope: whatever JSON object is queued is held
/// verbatim under the queue it came from, whatever its delivery_info says.
#[tokio::test]
async fn claim_holds_any_object_verbatim_under_its_queue() {
    let Some(mut fx) = fixture("claim_holds_any_object_verbatim_under_its_queue").await else {
        return;
    };
    let k = fx.k.clone();
    let queue = "a\"b}{c";
    let list = k.queue(queue, 0);
    let cases = [
        // Python's json.dumps: ", " and ": " separators.
        r#"{"body": "W10=", "headers": {"task": "t"}, "properties": {"delivery_info": {"exchange": "celery", "routing_key": "celery"}, "delivery_tag": "tag-py"}}"#,
        // Blanks around the object.
        " {\"body\":\"W10=\",\"properties\":{}}\n",
        // Not a kombu envelope, but an object: the client's decoder decides.
        r#"{"properties": {"delivery_tag": "t"}}"#,
    ];
    for raw in cases {
        let _: () = fx.conn.lpush(&list, raw).await.expect("redis command");
    }
    let got = fx.claim(&[(list, queue)], 10, 30_000).await;
    assert_eq!(got.len(), cases.len(), "nothing dead-lettered");
    for (raw, (_, element, hold)) in cases.iter().zip(&got) {
        assert_eq!(element, raw);
        let entry = fx.hget(&k.unacked, hold).await.expect("an unacked entry");
        assert_eq!(
            entry,
            format!(
                "[{raw},\"\",{}]",
                serde_json::to_string(queue).expect("json")
            )
        );
    }
    // The entries of real envelopes parse as kombu's restore reads them.
    let entry = fx.hget(&k.unacked, &got[0].2).await.expect("an entry");
    let (envelope, ex, rk): (serde_json::Value, String, String) =
        serde_json::from_str(&entry).expect("[envelope, exchange, routing_key]");
    assert_eq!(envelope["properties"]["delivery_tag"], "tag-py");
    assert_eq!((ex.as_str(), rk.as_str()), ("", queue));
}

#[tokio::test]
async fn claim_dead_letters_what_is_not_an_object() {
    let Some(mut fx) = fixture("claim_dead_letters_what_is_not_an_object").await else {
        return;
    };
    let k = fx.k.clone();
    let list = k.queue("q", 0);
    let bad: [&[u8]; 4] = [
        b"not json at all \xff",
        b"[1, 2, 3]",
        b"\"a string\"",
        b"{\"open\": 1",
    ];
    for element in bad {
        let _: () = fx.conn.lpush(&list, element).await.expect("redis command");
    }
    let good = envelope("tag-good", "q");
    let _: () = fx.conn.lpush(&list, &good).await.expect("redis command");

    let got = fx.claim(&[(list.clone(), "q")], 1, 30_000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1, good,
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
    let first = fx.hold("tag", "q", 30_000).await;
    let second = fx.hold("tag-2", "q", 30_000).await;

    assert_eq!(fx.ack(&["999999"]).await, 0, "another hold is not acked");
    assert_eq!(fx.traces(&first).await, HELD);
    assert_eq!(fx.ack(&[&first, "other"]).await, 1);
    assert_eq!(fx.traces(&first).await, GONE);
    assert_eq!(fx.traces(&second).await, HELD);
    assert_eq!(fx.ack(&[&first]).await, 0, "a second ack is a no-op");
}

#[tokio::test]
async fn ack_after_a_kombu_restore_cleans_the_lease() {
    let Some(mut fx) = fixture("ack_after_a_kombu_restore_cleans_the_lease").await else {
        return;
    };
    let k = fx.k.clone();
    let hold = fx.hold("tag", "q", 1_000).await;
    // A kombu scan restored the message (its unacked entry and index went); a Python
    // worker then holds it under its own tag.
    let _: () = fx
        .conn
        .hdel(&k.unacked, &hold)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zrem(&k.unacked_index, &hold)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .hset(&k.unacked, "tag", unacked_value(&envelope("tag", "q"), "q"))
        .await
        .expect("redis command");
    assert_eq!(fx.ack(&[&hold]).await, 0);
    assert_eq!(fx.traces(&hold).await, GONE, "the stray lease went");
    assert!(
        fx.hget(&k.unacked, "tag").await.is_some(),
        "the Python worker's hold stays"
    );
}

async fn renew(fx: &mut Fixture, holds: &[&str]) -> i64 {
    let k = fx.k.clone();
    let script = Script::new(scripts::RENEW);
    let mut invocation = script.prepare_invoke();
    invocation.key(&k.unacked_index).key(&k.leases).arg(60_000);
    for hold in holds {
        invocation.arg(*hold);
    }
    invocation
        .invoke_async::<i64>(&mut fx.conn)
        .await
        .expect("redis command")
}

#[tokio::test]
async fn renew_extends_the_lease_and_the_kombu_delivery_time() {
    let Some(mut fx) = fixture("renew_extends_the_lease_and_the_kombu_delivery_time").await else {
        return;
    };
    let k = fx.k.clone();
    let hold = fx.hold("tag", "q", 1_000).await;
    // Pretend the delivery is old, as kombu's scan would see it.
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, &hold, 1_000.0)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zadd(&k.leases, &hold, 1_000_000.0)
        .await
        .expect("redis command");

    let before = server_ms(&mut fx.conn).await;
    assert_eq!(renew(&mut fx, &[&hold, "424242"]).await, 1);
    let lease = fx.zscore(&k.leases, &hold).await.expect("redis command");
    assert!(
        lease >= before.floor() + 60_000.0 - 1.0,
        "{lease} vs {before}"
    );
    let index = fx
        .zscore(&k.unacked_index, &hold)
        .await
        .expect("redis command")
        * 1000.0;
    assert!(index >= before - 1.0, "delivery time moved to now");
    assert_eq!(
        fx.zscore(&k.unacked_index, "424242").await,
        None,
        "never added"
    );
    assert_eq!(fx.zscore(&k.leases, "424242").await, None, "never added");
}

#[tokio::test]
async fn renew_leaves_an_ended_delivery_ended() {
    let Some(mut fx) = fixture("renew_leaves_an_ended_delivery_ended").await else {
        return;
    };
    let k = fx.k.clone();
    // Restored by a kombu scan: no index entry, the lease stays as it was.
    let restored = fx.hold("tag-a", "q", 1_000).await;
    let _: () = fx
        .conn
        .hdel(&k.unacked, &restored)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zrem(&k.unacked_index, &restored)
        .await
        .expect("redis command");
    // Lapsed and restored by celeriac: nothing left.
    let lapsed = fx.hold("tag-b", "q", 1_000).await;
    assert_eq!(fx.ack(&[&lapsed]).await, 1);
    let lease = fx.zscore(&k.leases, &restored).await;
    assert_eq!(renew(&mut fx, &[&restored, &lapsed]).await, 0);
    assert_eq!(fx.zscore(&k.leases, &restored).await, lease);
    assert_eq!(fx.traces(&restored).await, (false, false, true));
    assert_eq!(fx.traces(&lapsed).await, GONE);
}

async fn requeue(fx: &mut Fixture, hold: &str, envelope: &str, target: &str, mode: &str) -> i64 {
    let k = fx.k.clone();
    Script::new(scripts::REQUEUE)
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(target)
        .arg(hold)
        .arg(envelope)
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
    let hold = fx.hold("tag", "q", 30_000).await;
    let _: () = fx
        .conn
        .lpush(&list, &[envelope("x", "q"), envelope("y", "q")])
        .await
        .expect("redis command");
    let back = redelivered("tag", "q");

    assert_eq!(
        requeue(&mut fx, "1000000", &back, &list, "requeue").await,
        0
    );
    assert_eq!(fx.traces(&hold).await, HELD, "another hold changes nothing");

    assert_eq!(requeue(&mut fx, &hold, &back, &list, "requeue").await, 1);
    assert_eq!(fx.traces(&hold).await, GONE);
    // LPUSH: at the head, i.e. the back of the queue (consumers RPOP the tail).
    assert_eq!(
        fx.list(&list).await,
        [back.clone(), envelope("y", "q"), envelope("x", "q")]
    );
    assert_eq!(
        requeue(&mut fx, &hold, &back, &list, "requeue").await,
        0,
        "an ended delivery puts nothing back twice"
    );

    // Taken again, then released: to the tail (front).
    let _: String = fx.conn.lpop(&list, None).await.expect("redis command");
    let _: () = fx.conn.rpush(&list, &back).await.expect("redis command");
    let got = fx.claim(&[(list.clone(), "q")], 1, 30_000).await;
    assert_eq!(got[0].1, back);
    assert_eq!(
        requeue(&mut fx, &got[0].2, &back, &list, "release").await,
        1
    );
    assert_eq!(
        fx.list(&list).await,
        [envelope("y", "q"), envelope("x", "q"), back]
    );
}

#[tokio::test]
async fn dead_letter_moves_the_message_and_counts_it() {
    let Some(mut fx) = fixture("dead_letter_moves_the_message_and_counts_it").await else {
        return;
    };
    let k = fx.k.clone();
    let hold = fx.hold("tag", "q", 30_000).await;
    let run = |fx: &mut Fixture, hold: String| {
        let k = fx.k.clone();
        let mut conn = fx.conn.clone();
        async move {
            Script::new(scripts::DEAD_LETTER)
                .key(&k.unacked)
                .key(&k.unacked_index)
                .key(&k.leases)
                .key(&k.dead_letters)
                .key(&k.dead_letter_counts)
                .arg(hold)
                .arg(r#"{"id":"1","queue":"q","reason":"r","at":1,"payload":"p"}"#)
                .arg("q")
                .invoke_async::<i64>(&mut conn)
                .await
                .expect("redis command")
        }
    };
    assert_eq!(run(&mut fx, "123456789".into()).await, 0);
    assert_eq!(fx.traces(&hold).await, HELD);
    assert_eq!(run(&mut fx, hold.clone()).await, 1);
    assert_eq!(fx.traces(&hold).await, GONE);
    assert_eq!(run(&mut fx, hold).await, 0, "once");
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
    let lapsed = fx.hold("lapsed", "q", 0).await;
    let alive = fx.hold("alive", "q", 60_000).await;
    let renewed = fx.hold("renewed", "q", 0).await;
    let acked = fx.hold("acked", "q", 0).await;
    let orphan = fx.hold("orphan", "q", 0).await;
    let _: () = fx
        .conn
        .lpush(&list, envelope("waiting", "q"))
        .await
        .expect("redis command");
    // "renewed" got a new lease after the caller read the lapsed leases.
    let later = server_ms(&mut fx.conn).await + 60_000.0;
    let _: () = fx
        .conn
        .zadd(&k.leases, &renewed, later)
        .await
        .expect("redis command");
    // "acked" was acknowledged meanwhile.
    assert_eq!(fx.ack(&[&acked]).await, 1);
    // "orphan": restored by a kombu scan, in its queue again; the caller found no entry.
    let _: () = fx
        .conn
        .hdel(&k.unacked, &orphan)
        .await
        .expect("redis command");
    let _: () = fx
        .conn
        .zrem(&k.unacked_index, &orphan)
        .await
        .expect("redis command");

    let script = Script::new(scripts::RESTORE_EXPIRED);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.dead_letters)
        .key(&k.dead_letter_counts);
    for (hold, tag) in [
        (&lapsed, "lapsed"),
        (&alive, "alive"),
        (&renewed, "renewed"),
        (&acked, "acked"),
    ] {
        invocation
            .key(&list)
            .arg(hold)
            .arg("push")
            .arg(redelivered(tag, "q"))
            .arg("q");
    }
    invocation
        .key(&k.leases)
        .arg(&orphan)
        .arg("drop")
        .arg("")
        .arg("q");
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
    assert_eq!(fx.traces(&lapsed).await, GONE);
    assert_eq!(fx.traces(&alive).await, HELD);
    assert_eq!(fx.traces(&renewed).await, HELD);
    assert_eq!(fx.traces(&acked).await, GONE);
    assert_eq!(fx.traces(&orphan).await, GONE, "only its lease was left");
}

#[tokio::test]
async fn restore_expired_dead_letters_an_unusable_entry() {
    let Some(mut fx) = fixture("restore_expired_dead_letters_an_unusable_entry").await else {
        return;
    };
    let k = fx.k.clone();
    let hold = fx.hold("tag", "q", 0).await;
    let restored: i64 = Script::new(scripts::RESTORE_EXPIRED)
        .key(&k.unacked)
        .key(&k.unacked_index)
        .key(&k.leases)
        .key(&k.dead_letters)
        .key(&k.dead_letter_counts)
        .key(&k.leases)
        .arg(&hold)
        .arg("dead")
        .arg("{\"record\":1}")
        .arg("q")
        .invoke_async(&mut fx.conn)
        .await
        .expect("redis command");
    assert_eq!(restored, 0);
    assert_eq!(fx.traces(&hold).await, GONE);
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
    let leased_hold = fx.hold("leased", "q", 60_000).await;
    let _: () = fx
        .conn
        .zadd(&k.unacked_index, &leased_hold, now_s - 7200.0)
        .await
        .expect("redis command");
    let leased = fx
        .hget(&k.unacked, &leased_hold)
        .await
        .expect("redis command");

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
        (&leased_hold, leased, "push", redelivered("leased", "q")),
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
    assert_eq!(fx.traces(&leased_hold).await, HELD);
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
        .claim_numbered(999_001, &[(q0.clone(), "q")], 5, 30_000)
        .await;
    assert!(got.is_empty(), "a fenced claim holds nothing: {got:?}");
    assert_eq!(
        fx.list(&q0).await,
        std::slice::from_ref(&a),
        "the message stays queued"
    );
    assert_eq!(fx.traces("999001001").await, GONE);
    // Another claim takes it, under a hold id of its own number.
    let got = fx
        .claim_numbered(999_002, &[(q0.clone(), "q")], 5, 30_000)
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, "999002001");
    assert_eq!(fx.traces("999002001").await, HELD);
}
