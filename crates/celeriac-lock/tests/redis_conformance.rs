//! The lock manager conformance suite against Redis (each test under a key prefix of
//! its own, skipped with a printed reason when Redis does not answer), plus
//! Redis-only checks: the documented key names and each Lua script on seeded state.

use std::time::Duration;

use celeriac_lock::redis::{
    RedisLockKeys, RedisLockManager, ACQUIRE_SCRIPT, LIST_SCRIPT, RELEASE_SCRIPT, RENEW_SCRIPT,
};
use celeriac_lock::testing::RedisHarness;
use celeriac_lock::{AcquireParams, LockManager};

celeriac_lock::lock_conformance_tests!(optional RedisHarness::connect_or_skip);

async fn raw(harness: &RedisHarness) -> redis::aio::MultiplexedConnection {
    let target = celeriac_redis::RedisTarget::parse(harness.url()).expect("url");
    target
        .client()
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn locks_live_under_the_documented_keys_with_the_global_keyprefix() {
    let Some(harness) = RedisHarness::connect_or_skip("redis_documented_keys") else {
        return;
    };
    let manager = RedisLockManager::open_url(harness.url())
        .await
        .expect("open");
    let keys = RedisLockKeys::new(harness.prefix());
    let dispatched = celeriac_lock::connect(harness.url())
        .await
        .expect("connect dispatches redis:// to Redis");
    assert!(
        dispatched.describe().starts_with("redis://"),
        "{}",
        dispatched.describe()
    );
    let lease = manager
        .acquire(&AcquireParams::new(
            "single:billing.charge",
            Duration::from_secs(30),
            "w1 pid=7",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let mut conn = raw(&harness).await;
    let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!(
            "{}celeriac.lock:single:billing.charge",
            harness.prefix()
        ))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert_eq!(hash.get("token"), Some(&lease.token));
    assert_eq!(hash.get("owner").map(String::as_str), Some("w1 pid=7"));
    assert_eq!(hash.get("fencing"), Some(&lease.fencing.to_string()));
    assert_eq!(
        hash.get("expires_at"),
        Some(&lease.expires_at.timestamp_millis().to_string())
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(keys.lock("single:billing.charge"))
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(
        (29_000..=30_000).contains(&pttl),
        "the hash expires by itself: {pttl}"
    );
    let last: u64 = redis::cmd("GET")
        .arg(keys.fencing())
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(last, lease.fencing);
    let score: Option<i64> = redis::cmd("ZSCORE")
        .arg(keys.index())
        .arg("single:billing.charge")
        .query_async(&mut conn)
        .await
        .expect("zscore");
    assert_eq!(score, Some(lease.expires_at.timestamp_millis()));
    // An operator deleting the hash (as a Python script would) frees the lock.
    let _: i64 = redis::cmd("DEL")
        .arg(keys.lock("single:billing.charge"))
        .query_async(&mut conn)
        .await
        .expect("del");
    assert!(manager.list().await.expect("list").is_empty());
    assert!(!manager
        .renew(&lease, Duration::from_secs(30))
        .await
        .expect("renew"));
    let next = manager
        .acquire(&AcquireParams::new(
            "single:billing.charge",
            Duration::from_secs(30),
            "w2",
        ))
        .await
        .expect("acquire")
        .expect("free after DEL");
    assert!(next.fencing > lease.fencing);
    // A manager without the prefix sees none of these locks.
    let base = harness
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let unprefixed = RedisLockManager::open_url(&base).await.expect("open");
    assert!(!unprefixed
        .list()
        .await
        .expect("list")
        .iter()
        .any(|info| info.key == "single:billing.charge" && info.fencing == next.fencing));
}

#[tokio::test]
async fn scripts_act_on_seeded_state() {
    let Some(harness) = RedisHarness::connect_or_skip("redis_scripts_on_seeded_state") else {
        return;
    };
    let keys = RedisLockKeys::new(harness.prefix());
    let mut conn = raw(&harness).await;
    let acquire = redis::Script::new(ACQUIRE_SCRIPT);
    let renew = redis::Script::new(RENEW_SCRIPT);
    let release = redis::Script::new(RELEASE_SCRIPT);
    let lock = keys.lock("k");

    // A hash left past its expires_at (no PEXPIRE, as a crashed older writer might
    // leave it) counts as free; the fencing counter continues from its seeded value.
    let _: () = redis::cmd("HSET")
        .arg(&lock)
        .arg(&[
            "token",
            "old",
            "owner",
            "gone",
            "fencing",
            "41",
            "acquired_at",
            "1",
            "expires_at",
            "2",
        ])
        .query_async(&mut conn)
        .await
        .expect("seed");
    let _: () = redis::cmd("SET")
        .arg(keys.fencing())
        .arg(41)
        .query_async(&mut conn)
        .await
        .expect("seed");
    let taken: Option<(u64, i64, i64)> = acquire
        .key(&lock)
        .key(keys.fencing())
        .key(keys.index())
        .arg("k")
        .arg("tok-a")
        .arg("a")
        .arg(60_000)
        .invoke_async(&mut conn)
        .await
        .expect("acquire");
    let (fencing, acquired_at, expires_at) = taken.expect("a lapsed hash is free");
    assert_eq!(fencing, 42);
    assert_eq!(expires_at - acquired_at, 60_000);
    let server: (i64, i64) = redis::cmd("TIME")
        .query_async::<(i64, i64)>(&mut conn)
        .await
        .expect("time");
    let server_ms = server.0 * 1000 + server.1 / 1000;
    assert!(
        (acquired_at - server_ms).abs() < 1000,
        "Redis's clock: {acquired_at} vs {server_ms}"
    );
    // Held: a second acquisition returns nil and takes no fencing number.
    let again: Option<(u64, i64, i64)> = acquire
        .key(&lock)
        .key(keys.fencing())
        .key(keys.index())
        .arg("k")
        .arg("tok-b")
        .arg("b")
        .arg(60_000)
        .invoke_async(&mut conn)
        .await
        .expect("acquire");
    assert!(again.is_none());
    let last: u64 = redis::cmd("GET")
        .arg(keys.fencing())
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(last, 42);
    // Renew and release compare the token.
    let wrong: Option<i64> = renew
        .key(&lock)
        .key(keys.index())
        .arg("k")
        .arg("tok-b")
        .arg(1000)
        .invoke_async(&mut conn)
        .await
        .expect("renew");
    assert!(wrong.is_none());
    let renewed: Option<i64> = renew
        .key(&lock)
        .key(keys.index())
        .arg("k")
        .arg("tok-a")
        .arg(120_000)
        .invoke_async(&mut conn)
        .await
        .expect("renew");
    assert!(
        renewed.is_some_and(|at| at >= expires_at + 50_000),
        "{renewed:?}"
    );
    let stale: i64 = release
        .key(&lock)
        .key(keys.index())
        .arg("k")
        .arg("tok-b")
        .invoke_async(&mut conn)
        .await
        .expect("release");
    assert_eq!(stale, 0);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&lock)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, 1, "a wrong token deletes nothing");
    let released: i64 = release
        .key(&lock)
        .key(keys.index())
        .arg("k")
        .arg("tok-a")
        .invoke_async(&mut conn)
        .await
        .expect("release");
    assert_eq!(released, 1);
    let indexed: Option<i64> = redis::cmd("ZSCORE")
        .arg(keys.index())
        .arg("k")
        .query_async(&mut conn)
        .await
        .expect("zscore");
    assert!(indexed.is_none(), "released locks leave the index");
}

#[tokio::test]
async fn the_list_script_shows_only_live_indexed_locks() {
    let Some(harness) = RedisHarness::connect_or_skip("redis_list_script") else {
        return;
    };
    let keys = RedisLockKeys::new(harness.prefix());
    let mut conn = raw(&harness).await;
    let server: (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("time");
    let now = server.0 * 1000 + server.1 / 1000;
    let seed = |key: &str, expires_at: i64| {
        redis::cmd("HSET")
            .arg(keys.lock(key))
            .arg(&[
                "token",
                "t",
                "owner",
                &format!("owner-{key}"),
                "fencing",
                "7",
            ])
            .arg("acquired_at")
            .arg(now - 1000)
            .arg("expires_at")
            .arg(expires_at)
            .to_owned()
    };
    for (key, expires_at) in [
        ("b-live", now + 60_000),
        ("a-lapsed", now - 10),
        ("c-live", now + 30_000),
    ] {
        let _: () = seed(key, expires_at)
            .query_async(&mut conn)
            .await
            .expect("seed");
        let _: () = redis::cmd("ZADD")
            .arg(keys.index())
            .arg(expires_at)
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("index");
    }
    // Indexed as live, but its hash is gone (deleted by an operator).
    let _: () = redis::cmd("ZADD")
        .arg(keys.index())
        .arg(now + 60_000)
        .arg("d-deleted")
        .query_async(&mut conn)
        .await
        .expect("index");
    let flat: Vec<String> = redis::Script::new(LIST_SCRIPT)
        .key(keys.index())
        .arg(keys.lock_prefix())
        .invoke_async(&mut conn)
        .await
        .expect("list");
    let listed: Vec<(&str, &str)> = flat
        .chunks_exact(5)
        .map(|row| (row[0].as_str(), row[1].as_str()))
        .collect();
    assert_eq!(
        listed,
        vec![("c-live", "owner-c-live"), ("b-live", "owner-b-live")],
        "live locks in expiry order, without lapsed or deleted ones"
    );
    assert_eq!(flat[2], "7");
    assert_eq!(flat[4], (now + 30_000).to_string());
    // The manager sorts by key.
    let manager = RedisLockManager::open_url(harness.url())
        .await
        .expect("open");
    let keys_listed: Vec<String> = manager
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|info| info.key)
        .collect();
    assert_eq!(keys_listed, vec!["b-live", "c-live"]);
}
