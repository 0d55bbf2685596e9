//! Locks in Redis (`redis://`, `rediss://`, `redis+socket://`, `unix://`), normally
//! the broker's own server and database, under the broker's kombu
//! `global_keyprefix`, so a Python process (or `redis-cli`) sees and can release
//! them.
//!
//! # Keys
//!
//! With `P` the URL's `global_keyprefix` (empty by default):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P` `celeriac.lock:<key>` | HASH | `token`, `owner`, `fencing`, `acquired_at`, `expires_at` (Unix ms, Redis's clock); expires by itself at `expires_at` (`PEXPIREAT`) |
//! | `P` `celeriac.lock.fencing` | STRING | the last fencing number issued, for every key at once (`INCR`); never expires |
//! | `P` `celeriac.lock.index` | ZSET | lock key → `expires_at`, for `list`; lapsed members are removed by the next acquisition |
//!
//! A lock key (`single:…`, `unique:…`, see [`crate::keys`]) appears verbatim after
//! `celeriac.lock:`. An operator can read a lock with
//! `HGETALL "celeriac.lock:single:billing.charge"` and release it with `DEL` on that
//! hash (or `celeriac locks release KEY`); its holder's renewals then fail.
//!
//! # Atomicity and clocks
//!
//! Every operation that reads and writes is one Lua script (`acquire.lua`,
//! `renew.lua`, `release.lua`, `list.lua` next to this file, each with its KEYS /
//! ARGV / return contract at its top), so no other client runs between its check
//! and its write. Times come from Redis's clock (`TIME`) inside the scripts, so the
//! clocks of the clients do not matter. A single Redis server is assumed (as by
//! kombu's transport), not a cluster: `list.lua` builds hash names from the index.
//!
//! # Connection
//!
//! One self-reconnecting multiplexed connection per manager (clones share it). A
//! script that fails because the connection dropped is run once more on the new
//! connection; that is safe for every script here (an acquisition that did run finds
//! the key held and returns `None`, and the lock lapses at its TTL).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_redis::connection::{self, Timeouts};
use celeriac_redis::RedisTarget;
use chrono::{DateTime, TimeZone, Utc};

use crate::{AcquireParams, Lease, LockError, LockInfo, LockManager};

/// Takes a lock if no live lock holds its key.
pub const ACQUIRE_SCRIPT: &str = include_str!("acquire.lua");
/// Extends a live lock held with a token.
pub const RENEW_SCRIPT: &str = include_str!("renew.lua");
/// Deletes a lock held with a token (compare-and-delete), or any holder's (forced).
pub const RELEASE_SCRIPT: &str = include_str!("release.lua");
/// Lists the live locks.
pub const LIST_SCRIPT: &str = include_str!("list.lua");

/// Longest lease accepted, so that times stay exact in Lua's numbers (100 years).
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// The key names of a Redis lock store, with the key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLockKeys {
    prefix: String,
}

impl RedisLockKeys {
    /// The keys under kombu's `global_keyprefix` (`""` for none).
    pub fn new(global_keyprefix: &str) -> RedisLockKeys {
        RedisLockKeys {
            prefix: global_keyprefix.to_string(),
        }
    }

    /// The prefix of every lock hash: `P` `celeriac.lock:`.
    pub fn lock_prefix(&self) -> String {
        format!("{}celeriac.lock:", self.prefix)
    }

    /// The hash of one lock: `P` `celeriac.lock:<key>`.
    pub fn lock(&self, key: &str) -> String {
        format!("{}celeriac.lock:{key}", self.prefix)
    }

    /// The fencing counter: `P` `celeriac.lock.fencing`.
    pub fn fencing(&self) -> String {
        format!("{}celeriac.lock.fencing", self.prefix)
    }

    /// The index of locks by expiry: `P` `celeriac.lock.index`.
    pub fn index(&self) -> String {
        format!("{}celeriac.lock.index", self.prefix)
    }
}

/// Settings of a [`RedisLockManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisLockOptions {
    /// How long a command may take (default 5 s).
    pub response_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connection_timeout: Duration,
}

impl Default for RedisLockOptions {
    fn default() -> Self {
        RedisLockOptions {
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// The Redis lock store. See the [module docs](self). Cheap to clone; clones share
/// one self-reconnecting connection.
#[derive(Clone)]
pub struct RedisLockManager {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    keys: RedisLockKeys,
    conn: ::redis::aio::ConnectionManager,
    acquire: ::redis::Script,
    renew: ::redis::Script,
    release: ::redis::Script,
    list: ::redis::Script,
}

impl std::fmt::Debug for RedisLockManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockManager")
            .field("target", &self.inner.target.display)
            .finish_non_exhaustive()
    }
}

impl RedisLockManager {
    /// Opens the store named by a Redis URL (see [`RedisTarget::parse`]; the
    /// database and `global_keyprefix` are the broker's) with default options.
    pub async fn open_url(url: &str) -> Result<RedisLockManager, LockError> {
        let target = RedisTarget::parse(url).map_err(|error| LockError::InvalidUrl {
            url: celeriac_redis::redact(url),
            reason: error.to_string(),
        })?;
        RedisLockManager::open(target, RedisLockOptions::default()).await
    }

    /// Connects to `target`. Fails if Redis does not answer within
    /// [`RedisLockOptions::connection_timeout`]; afterwards a lost connection is
    /// re-established by itself (a command during the outage fails).
    pub async fn open(
        target: RedisTarget,
        options: RedisLockOptions,
    ) -> Result<RedisLockManager, LockError> {
        let timeouts = Timeouts {
            response: options.response_timeout,
            connect: options.connection_timeout,
        };
        let conn = connection::commands(&target, timeouts)
            .await
            .map_err(LockError::storage)?;
        Ok(RedisLockManager {
            inner: Arc::new(Inner {
                keys: RedisLockKeys::new(&target.global_keyprefix),
                target,
                conn,
                acquire: ::redis::Script::new(ACQUIRE_SCRIPT),
                renew: ::redis::Script::new(RENEW_SCRIPT),
                release: ::redis::Script::new(RELEASE_SCRIPT),
                list: ::redis::Script::new(LIST_SCRIPT),
            }),
        })
    }

    /// The key names.
    pub fn keys(&self) -> &RedisLockKeys {
        &self.inner.keys
    }

    /// The parsed URL.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    fn conn(&self) -> ::redis::aio::ConnectionManager {
        self.inner.conn.clone()
    }

    /// Runs a script, once more on a new connection if the connection failed (the
    /// shared connection reconnects by itself; the first command after a drop fails).
    /// Safe for every script here: an acquisition that did run finds the key held
    /// and returns `None` (the lock lapses at its TTL); renew and release repeat
    /// harmlessly.
    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        match invocation.invoke_async(&mut self.conn()).await {
            Ok(value) => Ok(value),
            Err(error) if connection::is_connection_error(&error) => {
                tracing::debug!(%error, url = %self.inner.target.display, "Redis lock store connection lost; trying again");
                invocation
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(LockError::storage)
            }
            Err(error) => Err(LockError::storage(error)),
        }
    }

    /// Runs release.lua; an empty token releases whoever holds the lock.
    async fn delete(&self, key: &str, token: &str) -> Result<bool, LockError> {
        let deleted: i64 = self
            .invoke(
                self.inner
                    .release
                    .key(self.inner.keys.lock(key))
                    .key(self.inner.keys.index())
                    .arg(key)
                    .arg(token),
            )
            .await?;
        Ok(deleted == 1)
    }
}

#[async_trait]
impl LockManager for RedisLockManager {
    async fn acquire(&self, params: &AcquireParams) -> Result<Option<Lease>, LockError> {
        params.validate()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let taken: Option<(u64, i64, i64)> = self
            .invoke(
                self.inner
                    .acquire
                    .key(self.inner.keys.lock(&params.key))
                    .key(self.inner.keys.fencing())
                    .key(self.inner.keys.index())
                    .arg(&params.key)
                    .arg(&token)
                    .arg(&params.owner)
                    .arg(millis(params.ttl)),
            )
            .await?;
        Ok(taken.map(|(fencing, _acquired_at, expires_at)| Lease {
            key: params.key.clone(),
            token,
            fencing,
            expires_at: to_time(expires_at),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        if ttl < Duration::from_millis(1) {
            return Err(LockError::InvalidParams(format!(
                "the TTL of lock {:?} must be at least 1 ms, got {ttl:?}",
                lease.key
            )));
        }
        let renewed: Option<i64> = self
            .invoke(
                self.inner
                    .renew
                    .key(self.inner.keys.lock(&lease.key))
                    .key(self.inner.keys.index())
                    .arg(&lease.key)
                    .arg(&lease.token)
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(renewed.is_some())
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        if lease.token.is_empty() {
            // An empty token would mean "whoever holds it" to release.lua.
            return Ok(false);
        }
        self.delete(&lease.key, &lease.token).await
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let flat: Vec<String> = self
            .invoke(
                self.inner
                    .list
                    .key(self.inner.keys.index())
                    .arg(self.inner.keys.lock_prefix()),
            )
            .await?;
        let mut locks: Vec<LockInfo> = flat
            .chunks_exact(5)
            .map(|row| LockInfo {
                key: row[0].clone(),
                owner: row[1].clone(),
                fencing: row[2].parse().unwrap_or(0),
                acquired_at: to_time(row[3].parse().unwrap_or(0)),
                expires_at: to_time(row[4].parse().unwrap_or(0)),
            })
            .collect();
        locks.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(locks)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        self.delete(key, "").await
    }

    fn describe(&self) -> String {
        self.inner.target.display.clone()
    }
}

/// A duration in whole milliseconds, rounded up, at most [`MAX_TTL_MS`].
fn millis(duration: Duration) -> i64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_TTL_MS)
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_carry_the_global_keyprefix() {
        let keys = RedisLockKeys::new("app1_");
        assert_eq!(keys.lock("single:t"), "app1_celeriac.lock:single:t");
        assert_eq!(keys.lock_prefix(), "app1_celeriac.lock:");
        assert_eq!(keys.fencing(), "app1_celeriac.lock.fencing");
        assert_eq!(keys.index(), "app1_celeriac.lock.index");
        assert_eq!(
            RedisLockKeys::new("").lock("unique:k"),
            "celeriac.lock:unique:k"
        );
    }

    #[test]
    fn ttls_are_whole_milliseconds_within_a_century() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), MAX_TTL_MS);
    }

    #[tokio::test]
    async fn a_killed_connection_is_replaced_without_an_error() {
        let Some(base) =
            celeriac_redis::testing::redis_url_or_skip("redis_killed_connection_is_replaced")
        else {
            return;
        };
        let prefix = format!("celeriac-test-lock-{}:", uuid::Uuid::new_v4().simple());
        let manager = RedisLockManager::open_url(&format!("{base}?global_keyprefix={prefix}"))
            .await
            .expect("open");
        let lease = manager
            .acquire(&AcquireParams::new(
                "single:t",
                Duration::from_secs(30),
                "me",
            ))
            .await
            .expect("acquire")
            .expect("free");
        let id: i64 = ::redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut manager.conn())
            .await
            .expect("client id");
        let mut admin = manager
            .target()
            .client()
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        let killed: i64 = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .expect("client kill");
        assert_eq!(killed, 1, "the manager's connection was killed");
        assert!(
            manager
                .renew(&lease, Duration::from_secs(30))
                .await
                .expect("renew right after the kill"),
            "renewed on a new connection"
        );
        let new_id: i64 = ::redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut manager.conn())
            .await
            .expect("client id");
        assert_ne!(new_id, id, "a new connection");
        assert!(manager.release(&lease).await.expect("release"));
        let keys = manager.keys();
        let _: Result<i64, _> = ::redis::cmd("DEL")
            .arg(keys.fencing())
            .arg(keys.index())
            .query_async(&mut admin)
            .await;
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for bad in ["redis://h/notadb", "redis+socket://relative.sock"] {
            assert!(
                matches!(
                    RedisLockManager::open_url(bad).await,
                    Err(LockError::InvalidUrl { .. })
                ),
                "{bad} is refused"
            );
        }
    }
}
