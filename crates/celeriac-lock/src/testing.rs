//! The lock manager conformance suite: one test per behaviour of the
//! [`LockManager`] contract, run by every implementation.
//!
//! An implementation provides a [`LockHarness`] and expands
//! [`lock_conformance_tests!`](crate::lock_conformance_tests) in one of its
//! integration test files:
//!
//! ```ignore
//! // tests/sqlite_conformance.rs
//! celeriac_lock::lock_conformance_tests!(celeriac_lock::testing::SqliteHarness::new());
//! ```
//!
//! [`LockHarness::manager`] returns a new handle to the same store on every call (its
//! own connection), which is how the suite stands in for several processes. Every
//! test uses keys no other test uses (a UUID in the key), so the tests run in
//! parallel, also against one shared store (a Redis database). Expiry is tested with
//! TTLs of a few hundred milliseconds and waits on conditions, never on fixed sleeps
//! long enough to "surely" pass.
//!
//! The test functions are public so an implementation can also call single ones.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::time::Instant;

use crate::{AcquireParams, Lease, LockError, LockManager};

/// Builds handles to one lock store for the conformance suite.
#[async_trait]
pub trait LockHarness: Send + Sync {
    /// A new handle to the same store on every call (as another process would open
    /// it). Panics if the store cannot be opened.
    async fn manager(&self) -> Arc<dyn LockManager>;
}

/// A SQLite file in a temporary directory, deleted on drop.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteHarness(celeriac_sqlite::testing::TempDatabase);

#[cfg(feature = "sqlite")]
impl SqliteHarness {
    /// A harness on a new, empty file. Panics if no temporary directory can be made.
    pub fn new() -> SqliteHarness {
        SqliteHarness(celeriac_sqlite::testing::TempDatabase::new("locks.db"))
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.0.path()
    }
}

#[cfg(feature = "sqlite")]
impl Default for SqliteHarness {
    fn default() -> Self {
        SqliteHarness::new()
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl LockHarness for SqliteHarness {
    async fn manager(&self) -> Arc<dyn LockManager> {
        let manager = crate::sqlite::SqliteLockManager::open(
            self.path(),
            crate::sqlite::SqliteLockOptions::default(),
        )
        .await
        .expect("the SQLite harness opens its file");
        Arc::new(manager)
    }
}

/// A unique key prefix (`global_keyprefix`) in the test Redis database, so runs and
/// tests never share keys; its keys are deleted on drop.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisHarness {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl RedisHarness {
    /// A harness on the test Redis (`CELERIAC_TEST_REDIS_URL`, default
    /// `redis://127.0.0.1:6379`) with a new key prefix, or `None` (with the reason
    /// printed) when Redis does not answer; panics then if
    /// `CELERIAC_REQUIRE_SERVICES=1`.
    pub fn connect_or_skip(test: &str) -> Option<RedisHarness> {
        let base = celeriac_redis::testing::redis_url_or_skip(test)?;
        let prefix = format!("celeriac-test-lock-{}:", uuid::Uuid::new_v4().simple());
        let separator = if base.contains('?') { '&' } else { '?' };
        Some(RedisHarness {
            url: format!("{base}{separator}global_keyprefix={prefix}"),
            prefix,
        })
    }

    /// The store's URL (with the harness's `global_keyprefix`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The harness's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisHarness {
    fn drop(&mut self) {
        celeriac_redis::testing::delete_prefixed_keys(&self.url);
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl LockHarness for RedisHarness {
    async fn manager(&self) -> Arc<dyn LockManager> {
        let manager = crate::redis::RedisLockManager::open_url(&self.url)
            .await
            .expect("the Redis harness connects");
        Arc::new(manager)
    }
}

/// The PostgreSQL URL for service tests (`CELERIAC_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`) if a server answers there. Otherwise:
/// panics when `CELERIAC_REQUIRE_SERVICES=1`, or prints why the test is skipped and
/// returns `None`.
#[cfg(feature = "postgres")]
pub fn postgres_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("CELERIAC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let answers = url
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|config| {
            let host = match config.get_hosts().first()? {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                #[allow(unreachable_patterns)]
                _ => return None,
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .ok()?
                .next()
        })
        .is_some_and(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        });
    if answers {
        return Some(url);
    }
    let required = std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: PostgreSQL does not answer at {url} and CELERIAC_REQUIRE_SERVICES=1"
    );
    eprintln!(
        "skipped {test}: PostgreSQL does not answer at {url} (set CELERIAC_TEST_POSTGRES_URL)"
    );
    None
}

/// A new schema in the test PostgreSQL database, so runs and tests never share
/// tables; dropped (with its tables) on drop.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PostgresHarness {
    url: String,
    schema: String,
}

#[cfg(feature = "postgres")]
impl PostgresHarness {
    /// A harness on the test PostgreSQL ([`postgres_url_or_skip`]) with a new
    /// schema, or `None` when PostgreSQL does not answer.
    pub fn connect_or_skip(test: &str) -> Option<PostgresHarness> {
        let url = postgres_url_or_skip(test)?;
        Some(PostgresHarness {
            url,
            schema: format!("celeriac_test_lock_{}", uuid::Uuid::new_v4().simple()),
        })
    }

    /// The server's URL (without the schema).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The harness's schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The store's URL, naming the harness's schema (`?schema=…`).
    pub fn store_url(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}schema={}", self.url, self.schema)
    }
}

#[cfg(feature = "postgres")]
impl Drop for PostgresHarness {
    fn drop(&mut self) {
        let url = self.url.clone();
        let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // A runtime of its own: drop may run inside (or outside) the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client.batch_execute(&statement).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test schema {}", self.schema);
        }
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl LockHarness for PostgresHarness {
    async fn manager(&self) -> Arc<dyn LockManager> {
        let manager = crate::postgres::PostgresLockManager::open_url(&self.store_url())
            .await
            .expect("the PostgreSQL harness connects");
        Arc::new(manager)
    }
}

/// Expands to one `#[tokio::test]` per conformance behaviour. The argument is an
/// expression building a [`LockHarness`], evaluated once per test; or
/// `optional PATH`, a function `fn(&str) -> Option<impl LockHarness>` called with
/// the test's name, whose `None` skips the test (a server that does not answer):
///
/// ```ignore
/// celeriac_lock::lock_conformance_tests!(optional celeriac_lock::testing::RedisHarness::connect_or_skip);
/// ```
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`).
#[macro_export]
macro_rules! lock_conformance_tests {
    (@list [$($harness:tt)+]) => {
        $crate::lock_conformance_tests!(@tests [$($harness)+];
            acquire_returns_a_live_lease,
            acquire_is_exclusive_under_concurrent_acquirers,
            different_keys_are_independent,
            expiry_lets_another_acquire,
            renew_extends_only_for_the_owner,
            a_lapsed_lease_cannot_be_renewed,
            release_frees_the_key_at_once,
            release_by_a_stale_token_fails,
            fencing_strictly_increases_per_key,
            list_shows_live_locks_only,
            force_release_removes_any_holder,
            invalid_params_are_refused,
        );
    };
    (@tests [optional $connect:path]; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(harness) = $connect(stringify!($name)) else {
                    return;
                };
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(60),
                    $crate::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
    (@tests [$harness:expr]; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(60),
                    $crate::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
    (optional $connect:path) => {
        $crate::lock_conformance_tests!(@list [optional $connect]);
    };
    ($harness:expr) => {
        $crate::lock_conformance_tests!(@list [$harness]);
    };
}

/// A key no other test uses.
fn unique_key(label: &str) -> String {
    format!("conformance:{label}:{}", uuid::Uuid::new_v4().simple())
}

fn params(key: &str, ttl: Duration, owner: &str) -> AcquireParams {
    AcquireParams::new(key, ttl, owner)
}

/// Acquires `key`, which must be free.
async fn take(manager: &Arc<dyn LockManager>, key: &str, ttl: Duration, owner: &str) -> Lease {
    manager
        .acquire(&params(key, ttl, owner))
        .await
        .expect("acquire succeeds")
        .unwrap_or_else(|| panic!("{key} is free for {owner}"))
}

/// Whether `key` can be acquired now (the lease is released again at once).
async fn is_free(manager: &Arc<dyn LockManager>, key: &str) -> bool {
    let probe = manager
        .acquire(&params(key, Duration::from_secs(5), "probe"))
        .await
        .expect("acquire succeeds");
    match probe {
        Some(lease) => {
            assert!(manager.release(&lease).await.expect("release succeeds"));
            true
        }
        None => false,
    }
}

/// Polls `acquire` every 10 ms until it succeeds; panics after `limit`.
async fn acquire_within(
    manager: &Arc<dyn LockManager>,
    key: &str,
    ttl: Duration,
    owner: &str,
    limit: Duration,
) -> Lease {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(lease) = manager
            .acquire(&params(key, ttl, owner))
            .await
            .expect("acquire succeeds")
        {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "{owner} acquires {key} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Acquire returns the key, a token, a fencing number and an expiry about `ttl` away;
/// the key is then held.
pub async fn acquire_returns_a_live_lease(harness: &dyn LockHarness) {
    let manager = harness.manager().await;
    let key = unique_key("live");
    let before = Utc::now();
    let lease = take(&manager, &key, Duration::from_secs(30), "owner-a").await;
    let after = Utc::now();
    assert_eq!(lease.key, key);
    assert!(!lease.token.is_empty(), "a token");
    assert!(lease.fencing > 0, "fencing numbers start above zero");
    let ttl = chrono::Duration::seconds(30);
    assert!(
        lease.expires_at >= before + ttl - chrono::Duration::milliseconds(5)
            && lease.expires_at <= after + ttl + chrono::Duration::milliseconds(5),
        "expires about 30 s from now: {}",
        lease.expires_at
    );
    let second = manager
        .acquire(&params(&key, Duration::from_secs(30), "owner-b"))
        .await
        .expect("acquire succeeds");
    assert!(second.is_none(), "a held key is refused");
    assert!(manager.release(&lease).await.expect("release"));
}

/// Eight acquirers on eight handles race for one key, ten times: each round exactly
/// one wins, and no other acquires while it holds the key.
pub async fn acquire_is_exclusive_under_concurrent_acquirers(harness: &dyn LockHarness) {
    const ACQUIRERS: usize = 8;
    let mut managers = Vec::with_capacity(ACQUIRERS);
    for _ in 0..ACQUIRERS {
        managers.push(harness.manager().await);
    }
    for round in 0..10 {
        let key = unique_key(&format!("race-{round}"));
        let start = Arc::new(tokio::sync::Barrier::new(ACQUIRERS));
        let attempts: Vec<_> = managers
            .iter()
            .enumerate()
            .map(|(i, manager)| {
                let manager = Arc::clone(manager);
                let key = key.clone();
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    let got = manager
                        .acquire(&params(
                            &key,
                            Duration::from_secs(30),
                            &format!("acquirer-{i}"),
                        ))
                        .await
                        .expect("acquire succeeds");
                    (i, got)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for attempt in attempts {
            let (i, got) = attempt.await.expect("acquirer task");
            if let Some(lease) = got {
                winners.push((i, lease));
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {ACQUIRERS} concurrent acquirers wins"
        );
        let (winner, lease) = winners.remove(0);
        let listed = managers[0].list().await.expect("list");
        let entry = listed
            .iter()
            .find(|info| info.key == key)
            .expect("the winner's lock is listed");
        assert_eq!(entry.owner, format!("acquirer-{winner}"));
        assert_eq!(entry.fencing, lease.fencing);
        assert!(managers[winner].release(&lease).await.expect("release"));
    }
}

/// Locks on different keys do not exclude each other.
pub async fn different_keys_are_independent(harness: &dyn LockHarness) {
    let a = harness.manager().await;
    let b = harness.manager().await;
    let first = take(
        &a,
        &unique_key("independent-1"),
        Duration::from_secs(30),
        "a",
    )
    .await;
    let second = take(
        &b,
        &unique_key("independent-2"),
        Duration::from_secs(30),
        "b",
    )
    .await;
    assert_ne!(first.token, second.token);
    assert!(a.release(&first).await.expect("release"));
    assert!(b.release(&second).await.expect("release"));
}

/// A lock nobody renews lapses after its TTL, and then another handle acquires it.
pub async fn expiry_lets_another_acquire(harness: &dyn LockHarness) {
    let holder = harness.manager().await;
    let other = harness.manager().await;
    let key = unique_key("expiry");
    let ttl = Duration::from_millis(300);
    let started = Instant::now();
    let first = take(&holder, &key, ttl, "dies").await;
    let refused = other
        .acquire(&params(&key, ttl, "waits"))
        .await
        .expect("acquire succeeds");
    assert!(refused.is_none(), "held before the TTL");
    let second = acquire_within(
        &other,
        &key,
        Duration::from_secs(30),
        "waits",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not acquired before the TTL ran out ({:?})",
        started.elapsed()
    );
    assert!(second.fencing > first.fencing);
    assert!(other.release(&second).await.expect("release"));
}

/// Renewing with the owner's lease extends the lock past its first TTL; a lease with
/// another token (same key) renews nothing.
pub async fn renew_extends_only_for_the_owner(harness: &dyn LockHarness) {
    let owner = harness.manager().await;
    let other = harness.manager().await;
    let key = unique_key("renew");
    let ttl = Duration::from_millis(400);
    let lease = take(&owner, &key, ttl, "owner").await;
    let mut forged = lease.clone();
    forged.token = "not-the-token".into();
    assert!(
        !other
            .renew(&forged, Duration::from_secs(60))
            .await
            .expect("renew"),
        "a wrong token renews nothing"
    );
    // Renew every 100 ms for three TTLs: the key stays held throughout.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert!(
            owner.renew(&lease, ttl).await.expect("renew"),
            "the owner renews"
        );
        assert!(!is_free(&other, &key).await, "held while renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once renewals stop, it lapses; the forged renewal did not extend it to 60 s.
    let next = acquire_within(&other, &key, ttl, "next", Duration::from_secs(10)).await;
    assert!(next.fencing > lease.fencing);
    assert!(other.release(&next).await.expect("release"));
}

/// A lapsed lease is never revived by renew, even while nobody else holds the key.
pub async fn a_lapsed_lease_cannot_be_renewed(harness: &dyn LockHarness) {
    let manager = harness.manager().await;
    let key = unique_key("lapsed");
    let lease = take(&manager, &key, Duration::from_millis(100), "slow").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait until the store reports the lock gone (listing is the store's own clock).
    while manager
        .list()
        .await
        .expect("list")
        .iter()
        .any(|info| info.key == key)
    {
        assert!(Instant::now() < deadline, "the lock lapses");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !manager
            .renew(&lease, Duration::from_secs(30))
            .await
            .expect("renew"),
        "renew after the lease lapsed fails"
    );
    assert!(is_free(&manager, &key).await, "and the key stays free");
}

/// Release by the owner frees the key at once; a second release returns false.
pub async fn release_frees_the_key_at_once(harness: &dyn LockHarness) {
    let owner = harness.manager().await;
    let other = harness.manager().await;
    let key = unique_key("release");
    let lease = take(&owner, &key, Duration::from_secs(30), "owner").await;
    assert!(owner.release(&lease).await.expect("release"));
    assert!(
        !owner.release(&lease).await.expect("release again"),
        "already released"
    );
    assert!(!owner
        .renew(&lease, Duration::from_secs(30))
        .await
        .expect("renew"));
    let next = take(&other, &key, Duration::from_secs(30), "next").await;
    assert!(next.fencing > lease.fencing);
    assert!(other.release(&next).await.expect("release"));
}

/// A stale holder (its lease lapsed and another took the key) can neither renew nor
/// release the new owner's lock, and the new owner keeps it.
pub async fn release_by_a_stale_token_fails(harness: &dyn LockHarness) {
    let stale = harness.manager().await;
    let fresh = harness.manager().await;
    let third = harness.manager().await;
    let key = unique_key("stale");
    let old = take(&stale, &key, Duration::from_millis(150), "paused").await;
    let new = acquire_within(
        &fresh,
        &key,
        Duration::from_secs(30),
        "successor",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        !stale
            .renew(&old, Duration::from_secs(60))
            .await
            .expect("renew"),
        "the stale holder cannot extend the successor's lock"
    );
    assert!(
        !stale.release(&old).await.expect("release"),
        "the stale holder cannot release the successor's lock"
    );
    let refused = third
        .acquire(&params(&key, Duration::from_secs(30), "third"))
        .await
        .expect("acquire succeeds");
    assert!(refused.is_none(), "the successor still holds the key");
    let listed = third.list().await.expect("list");
    let entry = listed.iter().find(|info| info.key == key).expect("listed");
    assert_eq!(
        (entry.owner.as_str(), entry.fencing),
        ("successor", new.fencing)
    );
    assert!(fresh
        .renew(&new, Duration::from_secs(30))
        .await
        .expect("renew"));
    assert!(fresh.release(&new).await.expect("release"));
}

/// Every acquisition of a key gets a larger fencing number than all before it:
/// after releases, after expiry, after a forced release, from any handle.
pub async fn fencing_strictly_increases_per_key(harness: &dyn LockHarness) {
    let a = harness.manager().await;
    let b = harness.manager().await;
    let key = unique_key("fencing");
    let mut seen = Vec::new();
    for round in 0..6 {
        let manager = if round % 2 == 0 { &a } else { &b };
        let lease = take(manager, &key, Duration::from_secs(30), "round").await;
        seen.push(lease.fencing);
        assert!(manager.release(&lease).await.expect("release"));
    }
    let lapsing = take(&a, &key, Duration::from_millis(100), "lapses").await;
    seen.push(lapsing.fencing);
    let after_expiry = acquire_within(
        &b,
        &key,
        Duration::from_secs(30),
        "after",
        Duration::from_secs(10),
    )
    .await;
    seen.push(after_expiry.fencing);
    assert!(a.force_release(&key).await.expect("force release"));
    let after_force = take(&a, &key, Duration::from_secs(30), "after-force").await;
    seen.push(after_force.fencing);
    assert!(a.release(&after_force).await.expect("release"));
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "strictly increasing: {seen:?}"
    );
}

/// `list` shows live locks with owner, fencing and times; not released or lapsed ones.
pub async fn list_shows_live_locks_only(harness: &dyn LockHarness) {
    let manager = harness.manager().await;
    let prefix = unique_key("list");
    let mine = |infos: Vec<crate::LockInfo>| -> Vec<crate::LockInfo> {
        infos
            .into_iter()
            .filter(|i| i.key.starts_with(&prefix))
            .collect()
    };
    let long = take(
        &manager,
        &format!("{prefix}:b-long"),
        Duration::from_secs(30),
        "long-owner",
    )
    .await;
    let short = take(
        &manager,
        &format!("{prefix}:c-short"),
        Duration::from_millis(150),
        "short-owner",
    )
    .await;
    let released = take(
        &manager,
        &format!("{prefix}:a-released"),
        Duration::from_secs(30),
        "gone",
    )
    .await;
    assert!(manager.release(&released).await.expect("release"));

    let listed = mine(manager.list().await.expect("list"));
    let keys: Vec<&str> = listed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![long.key.as_str(), short.key.as_str()],
        "live locks by key"
    );
    let entry = &listed[0];
    assert_eq!(
        (entry.owner.as_str(), entry.fencing),
        ("long-owner", long.fencing)
    );
    assert!(entry.acquired_at <= Utc::now() && entry.expires_at > Utc::now());
    assert_eq!(entry.expires_at, long.expires_at);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = mine(manager.list().await.expect("list"));
        if listed.len() == 1 {
            assert_eq!(
                listed[0].key, long.key,
                "the lapsed lock is no longer listed"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the short lock lapses from the list"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !manager.release(&short).await.expect("release"),
        "lapsed: nothing to release"
    );
    assert!(manager.release(&long).await.expect("release"));
}

/// `force_release` removes a live lock whoever holds it; the former holder's renew
/// and release then fail, and the key is free. Unknown keys return false.
pub async fn force_release_removes_any_holder(harness: &dyn LockHarness) {
    let holder = harness.manager().await;
    let admin = harness.manager().await;
    let key = unique_key("force");
    let lease = take(&holder, &key, Duration::from_secs(30), "holder").await;
    assert!(admin.force_release(&key).await.expect("force release"));
    assert!(
        !admin.force_release(&key).await.expect("again"),
        "nothing left to remove"
    );
    assert!(!holder
        .renew(&lease, Duration::from_secs(30))
        .await
        .expect("renew"));
    assert!(!holder.release(&lease).await.expect("release"));
    let next = take(&admin, &key, Duration::from_secs(30), "next").await;
    assert!(admin.release(&next).await.expect("release"));
    assert!(!admin
        .force_release(&unique_key("never-locked"))
        .await
        .expect("force release of an unknown key"));
    let lapsed_key = unique_key("force-lapsed");
    take(&admin, &lapsed_key, Duration::from_millis(100), "lapses").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .list()
        .await
        .expect("list")
        .iter()
        .any(|info| info.key == lapsed_key)
    {
        assert!(Instant::now() < deadline, "the lock lapses");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !admin
            .force_release(&lapsed_key)
            .await
            .expect("force release"),
        "a lapsed lock is not live: nothing to remove"
    );
}

/// An empty key and a zero TTL are refused with [`LockError::InvalidParams`].
pub async fn invalid_params_are_refused(harness: &dyn LockHarness) {
    let manager = harness.manager().await;
    let empty = manager
        .acquire(&params("", Duration::from_secs(1), "x"))
        .await;
    assert!(
        matches!(empty, Err(LockError::InvalidParams(_))),
        "{empty:?}"
    );
    let zero = manager
        .acquire(&params(&unique_key("zero"), Duration::ZERO, "x"))
        .await;
    assert!(matches!(zero, Err(LockError::InvalidParams(_))), "{zero:?}");
    let lease = take(
        &manager,
        &unique_key("zero-renew"),
        Duration::from_secs(5),
        "x",
    )
    .await;
    let renew = manager.renew(&lease, Duration::ZERO).await;
    assert!(
        matches!(renew, Err(LockError::InvalidParams(_))),
        "{renew:?}"
    );
    assert!(manager.release(&lease).await.expect("release"));
}
