//! Shared by the Redis test files: a harness with its own key prefix (deleted on
//! drop), raw connections for inspecting what was written, and a TCP proxy whose
//! connections a test can cut.

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use celeriac_backend::redis::{RedisBackend, RedisOptions};
use celeriac_backend::testing::BackendHarness;
use celeriac_backend::ResultBackend;
use celeriac_redis::RedisTarget;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A Redis server and a key prefix no other test uses; the prefix's keys are
/// deleted when the harness is dropped.
#[derive(Debug)]
pub struct RedisHarness {
    server: String,
    prefix: String,
}

impl RedisHarness {
    /// `None` (the test is skipped) if no Redis answers, see
    /// `celeriac_redis::testing::redis_url_or_skip`.
    pub fn new(test: &str) -> Option<RedisHarness> {
        let server = celeriac_redis::testing::redis_url_or_skip(test)?;
        Some(RedisHarness {
            server,
            prefix: format!("celeriac-test-{}:", uuid::Uuid::new_v4().simple()),
        })
    }

    /// The key prefix (ends in `:`, so Celery's rule adds nothing).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server URL without a prefix.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The backend URL: the server with `global_keyprefix`.
    pub fn url(&self) -> String {
        with_prefix(&self.server, &self.prefix)
    }

    /// The full key of `task_id`'s meta.
    pub fn key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    /// A new backend handle.
    pub async fn open(&self) -> RedisBackend {
        RedisBackend::open_url(&self.url())
            .await
            .expect("the Redis harness opens its backend")
    }

    /// A new backend handle with `options`, connecting to `server` instead.
    pub async fn open_via(&self, server: &str, options: RedisOptions) -> RedisBackend {
        let target = RedisTarget::parse(&with_prefix(server, &self.prefix)).expect("URL");
        RedisBackend::open(target, options)
            .await
            .expect("the Redis harness opens its backend")
    }

    /// A raw async connection to the server (same database).
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }

    /// A raw client for the server.
    pub fn client(&self) -> redis::Client {
        RedisTarget::parse(&self.server)
            .and_then(|t| t.client())
            .expect("client")
    }
}

/// `server` with `?global_keyprefix=prefix` (or `&...`).
pub fn with_prefix(server: &str, prefix: &str) -> String {
    let separator = if server.contains('?') { '&' } else { '?' };
    format!("{server}{separator}global_keyprefix={prefix}")
}

impl Drop for RedisHarness {
    fn drop(&mut self) {
        let Ok(mut conn) = self.client().get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl BackendHarness for RedisHarness {
    async fn backend(&self) -> Arc<dyn ResultBackend> {
        Arc::new(self.open().await)
    }

    fn expires_lazily(&self) -> bool {
        false
    }
}

/// A TCP proxy to the Redis server whose open connections can be cut at once.
pub struct Proxy {
    /// `redis://127.0.0.1:<port>` of the proxy.
    pub url: String,
    cut: watch::Sender<u64>,
}

impl Proxy {
    /// Starts a proxy to the server of `harness` on a free local port.
    pub async fn start(harness: &RedisHarness) -> Proxy {
        let target = RedisTarget::parse(harness.server()).expect("URL");
        let upstream = target
            .client_url
            .strip_prefix("redis://")
            .and_then(|rest| rest.split('/').next())
            .map(|authority| {
                authority
                    .rsplit('@')
                    .next()
                    .unwrap_or(authority)
                    .to_string()
            })
            .expect("a redis:// TCP URL");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            url: format!("redis://127.0.0.1:{port}/{}", target.db),
            cut,
        }
    }

    /// Closes every connection open through the proxy (new ones are accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}
