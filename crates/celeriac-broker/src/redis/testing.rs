//! A [`BrokerHarness`] over the Redis broker (features `redis` + `testing`).
//!
//! Each harness uses a fresh `global_keyprefix` (`celeriac-test-<uuid>:`), so tests
//! share one Redis server (and database) without seeing each other's keys, and
//! deletes its keys when dropped. It never flushes a database.

use std::sync::Arc;

use async_trait::async_trait;
use celeriac_redis::keys::{glob_escape, BrokerKeys};

use super::{RedisBroker, RedisBrokerOptions};
use crate::testing::BrokerHarness;
use crate::Broker;

/// A harness over a unique key prefix on one Redis server.
pub struct RedisHarness {
    url: String,
    prefix: String,
    options: RedisBrokerOptions,
}

impl RedisHarness {
    /// A harness on the server of `base_url` (e.g. `redis://127.0.0.1:6379/0`) with
    /// default options.
    pub fn new(base_url: &str) -> RedisHarness {
        RedisHarness::with_options(base_url, RedisBrokerOptions::default())
    }

    /// A harness on the server of `base_url` with the given options.
    pub fn with_options(base_url: &str, options: RedisBrokerOptions) -> RedisHarness {
        let prefix = format!("celeriac-test-{}:", uuid::Uuid::new_v4().simple());
        let separator = if base_url.contains('?') { '&' } else { '?' };
        RedisHarness {
            url: format!("{base_url}{separator}global_keyprefix={prefix}"),
            prefix,
            options,
        }
    }

    /// The URL of this harness's store (with its `global_keyprefix`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix of this harness.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key names under this harness's prefix.
    pub fn keys(&self) -> BrokerKeys {
        BrokerKeys::new(&self.prefix)
    }

    /// A new concrete handle on the store (panics if Redis does not answer: this is
    /// test support).
    pub async fn redis_broker(&self) -> RedisBroker {
        RedisBroker::open_url(&self.url, self.options.clone())
            .await
            .expect("open the Redis broker")
    }

    /// A plain connection to the server, for seeding and inspecting keys.
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url.split('?').next().unwrap_or(&self.url))
            .expect("a Redis client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }
}

impl Drop for RedisHarness {
    fn drop(&mut self) {
        let base = self.url.split('?').next().unwrap_or(&self.url).to_string();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        // A blocking connection of its own: this may run on an async runtime's
        // thread after its reactor stopped.
        let cleanup = std::thread::spawn(move || -> ::redis::RedisResult<()> {
            let mut conn = ::redis::Client::open(base.as_str())?.get_connection()?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)?;
                if !keys.is_empty() {
                    ::redis::cmd("UNLINK").arg(&keys).query::<()>(&mut conn)?;
                }
                cursor = next;
                if cursor == 0 {
                    return Ok(());
                }
            }
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!(
                "RedisHarness: deleting the keys under {:?} failed: {error}",
                self.prefix
            );
        }
    }
}

#[async_trait]
impl BrokerHarness for RedisHarness {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.redis_broker().await)
    }

    async fn inject_raw(&self, queue: &str, payload: &[u8]) -> bool {
        self.redis_broker()
            .await
            .push_raw(queue, payload)
            .await
            .expect("LPUSH a raw payload");
        true
    }
}
