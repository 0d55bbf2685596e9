//! The `LockManager` seam of celeriac: named locks with an owner token, a lease and a
//! fencing number, used for single-instance tasks and unique enqueue.
//!
//! # Layout
//!
//! - this module: the [`LockManager`] trait, its parameter and result types, and
//!   [`connect`].
//! - [`keys`]: every lock key celeriac builds (`single:…`, `unique:…`) and the message
//!   header that carries a unique-enqueue lock to the worker.
//! - [`sqlite`] (feature `sqlite`, on by default): locks in a SQLite file, normally
//!   the broker's, so operators see them beside the queues.
//! - [`redis`] (feature `redis`, on by default): locks in Redis, normally the
//!   broker's server, under its kombu `global_keyprefix`.
//! - [`postgres`] (feature `postgres`, on by default): locks in PostgreSQL, for any
//!   broker.
//! - `testing` (feature `testing`): the conformance suite every implementation runs
//!   from its own `tests/`.
//!
//! # Where the locks live
//!
//! [`connect`] picks the store by the URL's scheme. An app uses its broker's URL
//! unless the `lock_store` setting (`CELERIAC_LOCK_STORE`) names another store.
//!
//! | URL | store | names (operators can read and delete these) |
//! |---|---|---|
//! | `sqlite://PATH` | the file | table `lock_locks(key, token, owner, fencing, acquired_at, expires_at)`, table `lock_fencing(last)` |
//! | `redis://`, `rediss://`, `redis+socket://`, `unix://` | the URL's database | HASH `P` `celeriac.lock:<key>` (`token`, `owner`, `fencing`, `acquired_at`, `expires_at`, Unix ms; expires at `expires_at`), STRING `P` `celeriac.lock.fencing` (last fencing number), ZSET `P` `celeriac.lock.index` (key → `expires_at`), `P` being the URL's `global_keyprefix` |
//! | `postgres://`, `postgresql://` | the URL's database (schema: `?schema=NAME`, else the `search_path`) | table `celeriac_locks(key, token, owner, fencing, acquired_at, expires_at)`, sequence `celeriac_lock_fencing` |
//!
//! In every store a row or hash whose `expires_at` has passed (the store's clock) is
//! a lapsed lock, free for everyone. Deleting a lock's row or hash is a forced
//! release (`celeriac locks release KEY` does that).
//!
//! # Why leases, tokens and fencing numbers
//!
//! The lock that Celery users build with `cache.add(key, timeout)` has two flaws: a
//! crashed worker's lock stays until its long timeout (hence a "delete stale locks"
//! script at every deploy), and anyone can delete anyone's lock. Here:
//!
//! - **Lease.** Every lock expires at [`Lease::expires_at`] unless its holder renews
//!   it ([`LockManager::renew`]). A running holder renews every third of a short lease
//!   (seconds); a dead one stops, and its lock lapses by itself.
//! - **Owner token.** [`LockManager::acquire`] returns a random token. Renew and
//!   release compare it (compare-and-set, compare-and-delete), so a stale holder (a
//!   paused process whose lease lapsed and was taken over) can neither extend nor
//!   release the new owner's lock. Only [`LockManager::force_release`] (an operator's
//!   command) removes a lock without its token.
//! - **Fencing number.** Every acquisition of a key gets a number larger than any
//!   issued before for that key, across releases and expiries. A task hands it to a
//!   downstream store that refuses writes carrying a smaller number than it has seen,
//!   which closes the last gap a lease cannot: a holder that was paused past its lease
//!   and resumes writing.
//!
//! Every operation is atomic in the store (`BEGIN IMMEDIATE` on SQLite, one Lua
//! script on Redis, one statement on PostgreSQL), and times come from the store's
//! clock where there is one (Redis `TIME`, PostgreSQL `clock_timestamp()`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod keys;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// Errors of lock operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The URL cannot be used.
    #[error("invalid lock store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No lock store is available for this kind of broker yet.
    #[error("locks need a supported store (sqlite://PATH, redis://…, postgres://…; setting lock_store or CELERIAC_LOCK_STORE); {what} has none")]
    Unsupported {
        /// What was asked for, e.g. `the redis broker`.
        what: String,
    },
    /// The parameters cannot be used (an empty key, a zero TTL).
    #[error("invalid lock parameters: {0}")]
    InvalidParams(String),
    /// The store failed.
    #[error("lock store error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LockError {
    /// Wraps a storage error.
    pub fn storage<E: std::error::Error + Send + Sync + 'static>(error: E) -> LockError {
        LockError::Storage(Box::new(error))
    }
}

/// Parameters of [`LockManager::acquire`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireParams {
    /// The lock's name (see [`keys`]); not empty.
    pub key: String,
    /// The lease: the lock lapses this long after acquisition unless renewed. At least
    /// one millisecond.
    pub ttl: Duration,
    /// Who holds it, for people (`hostname/pid task-id`); shown by
    /// [`LockManager::list`], never compared.
    pub owner: String,
}

impl AcquireParams {
    /// Parameters for `key` held by `owner` for `ttl`.
    pub fn new(key: impl Into<String>, ttl: Duration, owner: impl Into<String>) -> AcquireParams {
        AcquireParams {
            key: key.into(),
            ttl,
            owner: owner.into(),
        }
    }

    /// Checks the parameters every store refuses.
    pub fn validate(&self) -> Result<(), LockError> {
        if self.key.is_empty() {
            return Err(LockError::InvalidParams("the lock key is empty".into()));
        }
        if self.ttl < Duration::from_millis(1) {
            return Err(LockError::InvalidParams(format!(
                "the TTL of lock {:?} must be at least 1 ms, got {:?}",
                self.key, self.ttl
            )));
        }
        Ok(())
    }
}

/// A held lock: what its holder needs to renew and release it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The lock's name.
    pub key: String,
    /// The owner token: proof of holding, compared by renew and release.
    pub token: String,
    /// Larger than every fencing number issued before for this key.
    pub fencing: u64,
    /// When the lock lapses unless renewed (as of acquisition).
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// A lease from its parts (a store builds these; a holder that only kept the key
    /// and token, such as a worker releasing a unique-enqueue lock taken by the
    /// sender, rebuilds one with any fencing number and time).
    pub fn new(
        key: impl Into<String>,
        token: impl Into<String>,
        fencing: u64,
        expires_at: DateTime<Utc>,
    ) -> Lease {
        Lease {
            key: key.into(),
            token: token.into(),
            fencing,
            expires_at,
        }
    }
}

/// A live lock as [`LockManager::list`] shows it (without its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's name.
    pub key: String,
    /// Who holds it ([`AcquireParams::owner`]).
    pub owner: String,
    /// The fencing number of the current holder.
    pub fencing: u64,
    /// When it was acquired.
    pub acquired_at: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

impl LockInfo {
    /// A lock listing entry.
    pub fn new(
        key: impl Into<String>,
        owner: impl Into<String>,
        fencing: u64,
        acquired_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> LockInfo {
        LockInfo {
            key: key.into(),
            owner: owner.into(),
            fencing,
            acquired_at,
            expires_at,
        }
    }
}

/// Named locks with owner tokens, leases and fencing numbers. Every implementation
/// passes the conformance suite in `celeriac_lock::testing` (feature `testing`).
///
/// A lock is *live* from its acquisition until its lease lapses or it is released;
/// an expired lock counts as free everywhere (acquire, renew, release, list).
#[async_trait]
pub trait LockManager: Send + Sync + 'static {
    /// Takes `params.key` for `params.ttl` if no live lock holds it. Returns the lease,
    /// or `None` when someone else holds the key. Atomic: of any number of concurrent
    /// acquirers (in any process) exactly one gets a free key.
    async fn acquire(&self, params: &AcquireParams) -> Result<Option<Lease>, LockError>;

    /// Extends a live lock to `ttl` from now if `lease` still holds it (same token).
    /// Returns `false` when the lease lapsed, was released, or another holder has the
    /// key; a lapsed lease is never revived.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError>;

    /// Releases the lock if `lease` still holds it (compare-and-delete on the token).
    /// Returns `false`, changing nothing, when it does not.
    async fn release(&self, lease: &Lease) -> Result<bool, LockError>;

    /// Every live lock, ordered by key.
    async fn list(&self) -> Result<Vec<LockInfo>, LockError>;

    /// Removes the live lock on `key` whoever holds it (an operator's action; its
    /// holder's renew and release then fail). Returns whether a live lock was removed.
    async fn force_release(&self, key: &str) -> Result<bool, LockError>;

    /// Where the locks live, for logs (`sqlite:///path`).
    fn describe(&self) -> String;
}

/// Opens the lock store named by a URL (normally the broker's): a SQLite file for
/// `sqlite://PATH`, Redis for `redis://`, `rediss://`, `redis+socket://` and
/// `unix://`, PostgreSQL for `postgres://` and `postgresql://`. Other schemes (and
/// stores whose feature is off) return [`LockError::Unsupported`].
pub async fn connect(url: &str) -> Result<Arc<dyn LockManager>, LockError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let manager = sqlite::SqliteLockManager::open_url(url).await?;
            Ok(Arc::new(manager))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+socket" | "unix" | "redis+unix" => {
            let manager = redis::RedisLockManager::open_url(url).await?;
            Ok(Arc::new(manager))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let manager = postgres::PostgresLockManager::open_url(url).await?;
            Ok(Arc::new(manager))
        }
        "" => Err(LockError::InvalidUrl {
            url: url.to_string(),
            reason: "expected sqlite://PATH, redis://HOST[:PORT][/DB] or postgres://…".into(),
        }),
        other => Err(LockError::Unsupported {
            what: format!("the {other} broker"),
        }),
    }
}

/// How often a holder renews a lease of `lease`: every third of it (at least every
/// 10 ms), so two renewals may fail before the lock lapses.
pub fn renew_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(10))
}
