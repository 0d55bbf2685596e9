//! Results in Redis, byte for byte as Celery's Redis result backend stores them
//! (`redis://`, `rediss://`, `redis+socket://`, `unix://`), so Python clients read
//! celeriac's results and celeriac reads Python workers' results.
//!
//! # Format (PROTOCOL.md §3)
//!
//! | what | Redis |
//! |---|---|
//! | a task's meta | STRING `<prefix>celery-task-meta-<task id>` = the task meta JSON |
//! | notification | `PUBLISH <same key> <same JSON>` on every write |
//! | expiry | the key's TTL (`SETEX`; `SET` without expiry for "never") |
//! | a saved group | STRING `<prefix>celery-taskset-meta-<group id>` = `{"result": <GroupResult tuple>}`, written and published like a meta (`group.rs`) |
//!
//! `<prefix>` is the URL's `global_keyprefix` query parameter with Celery's rule for
//! result backends (`result_backend_transport_options.global_keyprefix`): a `_` is
//! appended unless the prefix ends in one of `:_-.` (see [`Keys`]). The pub/sub
//! channel name equals the key, prefix included.
//!
//! # Writes
//!
//! Every write runs the Lua script [`STORE_SCRIPT`] (`store.lua`, contract at its
//! top): per key, GET; keep a stored SUCCESS; otherwise SETEX (PSETEX for
//! sub-second expiries, SET for none) and PUBLISH the same bytes. It is what
//! Celery's `MULTI; SETEX; PUBLISH; EXEC` plus its dedupe guard do, made atomic.
//! [`ResultBackend::store_many`] passes a whole batch (up to 1000 metas per call)
//! to one script call.
//!
//! # How `wait` learns about results
//!
//! Each handle (a [`RedisBackend`] and its clones) has one pub/sub connection, shared
//! by all its waiters and opened with the first wait. A waiter reads the key, then
//! registers its channel; once the channel is subscribed it reads the key again
//! (so a write between the first read and the subscription is not missed), and then
//! returns on the first published meta in a ready state. After a reconnect every
//! channel is subscribed again and every waiter reads its key again. A slow safety
//! re-read ([`RedisOptions::recheck_interval`], 5 s) covers anything else; there is
//! no polling loop. A ready meta stored through the same handle wakes its waiters
//! directly.
//!
//! # Not supported
//!
//! - [`ResultBackend::recent`] and [`ResultBackend::count_by_state`]: Redis keeps no
//!   index of results (Celery neither); both return [`BackendError::Unsupported`].
//! - [`ResultBackend::cleanup_expired`] returns 0: Redis deletes expired keys itself.
//! - Compressed results (Celery 5.7's `result_compression`) read as
//!   [`BackendError::Corrupt`] with a reason saying so; results serialized with
//!   anything but JSON likewise.
//!
//! # Chords
//!
//! Celery 5.7's chord bookkeeping on Celery's keys, atomic in Lua: see `chord.rs`
//! ([`CHORD_PART_RETURN_SCRIPT`] and its two companions).

mod chord;
mod group;
mod keys;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::TaskMeta;
use celeriac_redis::RedisTarget;
use tokio::time::Instant;

use crate::{BackendError, ResultBackend, StoreOutcome};
pub use chord::{CHORD_EXTEND_CLAIM_SCRIPT, CHORD_FINISH_SCRIPT, CHORD_PART_RETURN_SCRIPT};
pub use keys::{Keys, TASK_KEYPREFIX};
use subscriber::{Event, Subscriber};

/// The Lua script behind every write; its contract is the comment at its top.
pub const STORE_SCRIPT: &str = include_str!("store.lua");

/// Most metas written by one script call of [`ResultBackend::store_many`].
const BATCH: usize = 1000;

/// Longest expiry written (100 years); longer ones are capped.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// First delay before reading again after a failed read in `wait`.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// The prefix Celery 5.7 puts before compressed results.
const COMPRESSED_MAGIC: &[u8] = b"\x00celery-compressed\x00";

/// Settings of a [`RedisBackend`]. Start from [`RedisOptions::default`] and change
/// fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// How often a waiting [`ResultBackend::wait`] reads the key again even without
    /// a notification, as a safety net (default 5 s).
    pub recheck_interval: Duration,
    /// How long a command may take before it fails (default 10 s).
    pub response_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connection_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            recheck_interval: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// An unexpected reply from Redis.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
struct UnexpectedReply(String);

/// The Redis result backend. Cheap to clone; clones share the command connection
/// and the pub/sub connection.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    keys: Keys,
    options: RedisOptions,
    commands: ::redis::aio::ConnectionManager,
    script: ::redis::Script,
    subscriber: Subscriber,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.target.display)
            .field("prefix", &self.inner.keys.prefix())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Opens a Redis URL with default options (see [`RedisTarget::parse`] for the
    /// accepted forms and `global_keyprefix`).
    pub async fn open_url(url: &str) -> Result<RedisBackend, BackendError> {
        let target = RedisTarget::parse(url).map_err(|e| invalid_url(url, e))?;
        RedisBackend::open(target, RedisOptions::default()).await
    }

    /// Connects to `target`. Fails if Redis does not answer within
    /// [`RedisOptions::connection_timeout`]; afterwards lost connections are
    /// re-established by themselves.
    pub async fn open(
        target: RedisTarget,
        options: RedisOptions,
    ) -> Result<RedisBackend, BackendError> {
        let client = target
            .client()
            .map_err(|e| invalid_url(&target.display, e))?;
        // Few quick attempts per (re)connect: a caller waiting on a command learns
        // soon that Redis is away; the next command tries again.
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let commands = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| BackendError::Connection(Box::new(e)))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                keys: Keys::new(&target.global_keyprefix),
                subscriber: Subscriber::new(client),
                script: ::redis::Script::new(STORE_SCRIPT),
                commands,
                target,
                options,
            }),
        })
    }

    /// The key names of this backend.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The parsed URL.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// Runs [`STORE_SCRIPT`] for `metas`; one outcome per meta.
    async fn run_store(
        &self,
        metas: &[TaskMeta],
        expires: Option<Duration>,
    ) -> Result<Vec<StoreOutcome>, BackendError> {
        let mut invocation = self.inner.script.prepare_invoke();
        invocation.arg(ttl_ms(expires));
        let mut keys = Vec::with_capacity(metas.len());
        for meta in metas {
            let key = self.inner.keys.task_meta(&meta.task_id);
            let json = serde_json::to_vec(meta).map_err(BackendError::storage)?;
            invocation.key(&key).arg(json);
            keys.push(key);
        }
        let invocation = &invocation;
        let replies: Vec<i64> = self
            .retrying(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(redis_error)?;
        if replies.len() != metas.len() {
            return Err(BackendError::storage(UnexpectedReply(format!(
                "store.lua answered {} outcomes for {} metas",
                replies.len(),
                metas.len()
            ))));
        }
        let mut outcomes = Vec::with_capacity(metas.len());
        for ((meta, key), reply) in metas.iter().zip(&keys).zip(replies) {
            outcomes.push(match reply {
                1 => {
                    if meta.status.is_ready() {
                        self.inner.subscriber.notify(key, meta);
                    }
                    StoreOutcome::Stored
                }
                0 => StoreOutcome::KeptSuccess,
                other => {
                    return Err(BackendError::storage(UnexpectedReply(format!(
                        "store.lua answered {other} for {key}"
                    ))))
                }
            });
        }
        Ok(outcomes)
    }

    /// Runs `command` on the command connection, once more if the connection had
    /// to be replaced (it is reconnected in between). Every command here is
    /// idempotent (a repeated store writes and publishes the same bytes again).
    async fn retrying<T, F, Fut>(&self, command: F) -> ::redis::RedisResult<T>
    where
        F: Fn(::redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        match command(self.inner.commands.clone()).await {
            Err(error) if error.is_unrecoverable_error() => {
                tracing::debug!(%error, "result backend connection replaced; retrying once");
                command(self.inner.commands.clone()).await
            }
            other => other,
        }
    }

    /// The stored meta of `task_id` if it is in a ready state.
    async fn get_ready(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        Ok(self.get(task_id).await?.filter(|m| m.status.is_ready()))
    }
}

/// The script's expiry argument: milliseconds, 0 = never.
fn ttl_ms(expires: Option<Duration>) -> u64 {
    match expires {
        None => 0,
        Some(d) if d.is_zero() => 0,
        Some(d) => u64::try_from(d.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_MS),
    }
}

/// Parses a stored or published meta (`what` names the key for errors).
pub(crate) fn decode_meta(what: &str, bytes: &[u8]) -> Result<TaskMeta, BackendError> {
    let task_id = || {
        what.rsplit_once(TASK_KEYPREFIX)
            .map_or(what, |(_, id)| id)
            .to_string()
    };
    if bytes.starts_with(COMPRESSED_MAGIC) {
        return Err(BackendError::Corrupt {
            task_id: task_id(),
            reason: "the result is compressed (Celery's result_compression), which celeriac does not read; store results uncompressed".into(),
        });
    }
    let corrupt = |e: serde_json::Error| BackendError::Corrupt {
        task_id: task_id(),
        reason: format!("not a JSON task meta (result_serializer must be json): {e}"),
    };
    match serde_json::from_slice(bytes) {
        Ok(meta) => Ok(meta),
        Err(error) => {
            // Celery writes `"children": null` when a result is stored outside a task
            // (`backend.store_result(...)` without a request); read it as no children.
            let mut value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|_| corrupt(error))?;
            match value.get_mut("children") {
                Some(children) if children.is_null() => {
                    *children = serde_json::Value::Array(Vec::new());
                }
                _ => {}
            }
            serde_json::from_value(value).map_err(corrupt)
        }
    }
}

/// A URL the client refused.
fn invalid_url(url: &str, error: celeriac_redis::RedisError) -> BackendError {
    match error {
        celeriac_redis::RedisError::InvalidUrl { url, reason } => {
            BackendError::InvalidUrl { url, reason }
        }
        other => BackendError::InvalidUrl {
            url: celeriac_redis::redact(url),
            reason: other.to_string(),
        },
    }
}

/// Classifies a command error.
fn redis_error(error: ::redis::RedisError) -> BackendError {
    if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_connection_dropped()
    {
        BackendError::Connection(Box::new(error))
    } else {
        BackendError::Storage(Box::new(error))
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    fn describe(&self) -> String {
        self.inner.target.display.clone()
    }

    async fn store(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
    ) -> Result<StoreOutcome, BackendError> {
        let outcomes = self.run_store(std::slice::from_ref(meta), expires).await?;
        outcomes.into_iter().next().ok_or_else(|| {
            BackendError::storage(UnexpectedReply("store.lua answered nothing".into()))
        })
    }

    async fn store_many(
        &self,
        metas: &[TaskMeta],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        for batch in metas.chunks(BATCH) {
            self.run_store(batch, expires).await?;
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let key = self.inner.keys.task_meta(task_id);
        let key_ref = key.as_str();
        let raw: Option<Vec<u8>> = self
            .retrying(|mut conn| async move {
                ::redis::cmd("GET")
                    .arg(key_ref)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(redis_error)?;
        raw.map(|bytes| decode_meta(&key, &bytes)).transpose()
    }

    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = Instant::now().checked_add(timeout);
        if timeout.is_zero() {
            return self.get_ready(task_id).await;
        }
        // Registered before the first read: the SUBSCRIBE goes out while the read is
        // in flight, so a wait for a result not yet written does not pay the two
        // round trips one after the other. A read that finds the result drops the
        // registration, usually before the subscriber has sent anything for it.
        let key = self.inner.keys.task_meta(task_id);
        let mut registration = self.inner.subscriber.register(&key);
        if let Some(meta) = self.get_ready(task_id).await? {
            return Ok(Some(meta));
        }
        let recheck = self
            .inner
            .options
            .recheck_interval
            .max(Duration::from_millis(10));
        // After a failed read (Redis unreachable), read again soon, backing off.
        let mut retry: Option<Duration> = None;
        let mut events_open = true;
        loop {
            let next_check = Instant::now() + retry.unwrap_or(recheck);
            let (tick, last) = match deadline {
                Some(deadline) if deadline <= next_check => (deadline, true),
                _ => (next_check, false),
            };
            tokio::select! {
                event = registration.next(), if events_open => match event {
                    Some(Event::Ready(meta)) => return Ok(Some(Arc::unwrap_or_clone(meta))),
                    Some(Event::Subscribed) => {}
                    None => events_open = false,
                },
                () = tokio::time::sleep_until(tick) => {
                    if last {
                        return self.get_ready(task_id).await;
                    }
                }
            }
            match self.get_ready(task_id).await {
                Ok(Some(meta)) => return Ok(Some(meta)),
                Ok(None) => retry = None,
                Err(BackendError::Connection(error)) => {
                    tracing::debug!(%error, task_id, "reading a result failed; waiting on");
                    retry = Some(retry.map_or(RETRY_MIN, |d| (d * 2).min(recheck)));
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let key = self.inner.keys.task_meta(task_id);
        let key = key.as_str();
        let _: i64 = self
            .retrying(|mut conn| async move {
                ::redis::cmd("DEL").arg(key).query_async(&mut conn).await
            })
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn cleanup_expired(&self) -> Result<u64, BackendError> {
        // Redis deletes expired keys by itself.
        Ok(0)
    }

    async fn chord_set_size(
        &self,
        group_id: &str,
        size: u64,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.redis_chord_set_size(group_id, size, expires).await
    }

    async fn chord_part_return(
        &self,
        part: &crate::ChordPart,
        expires: Option<Duration>,
        claim_ttl: Duration,
    ) -> Result<crate::ChordProgress, BackendError> {
        self.redis_chord_part_return(part, expires, claim_ttl).await
    }

    async fn chord_extend_claim(
        &self,
        group_id: &str,
        claim: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.redis_chord_extend_claim(group_id, claim, ttl).await
    }

    async fn chord_finish(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        self.redis_chord_finish(group_id, claim).await
    }
    async fn save_group(
        &self,
        group: &crate::SavedGroup,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.redis_save_group(group, expires).await
    }

    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<crate::SavedGroup>, BackendError> {
        self.redis_restore_group(group_id).await
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        self.redis_forget_group(group_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::TaskState;
    use serde_json::json;

    #[test]
    fn expiries_are_milliseconds_and_zero_means_never() {
        assert_eq!(ttl_ms(None), 0);
        assert_eq!(ttl_ms(Some(Duration::ZERO)), 0);
        assert_eq!(ttl_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_ms(Some(Duration::from_secs(86400))), 86_400_000);
        assert_eq!(ttl_ms(Some(Duration::MAX)), MAX_TTL_MS);
    }

    #[test]
    fn compressed_and_non_json_values_are_reported_with_the_task_id() {
        let error = decode_meta(
            "app_celery-task-meta-abc",
            b"\x00celery-compressed\x00application/x-gzip\x00...",
        )
        .expect_err("compressed");
        assert!(
            matches!(&error, BackendError::Corrupt { task_id, reason } if task_id == "abc" && reason.contains("result_compression")),
            "{error}"
        );
        assert!(matches!(
            decode_meta("celery-task-meta-x", b"\x80\x04pickle"),
            Err(BackendError::Corrupt { task_id, .. }) if task_id == "x"
        ));
        for children in ["[]", "null"] {
            let raw = format!(
                r#"{{"status": "SUCCESS", "result": 5, "traceback": null, "children": {children}, "date_done": null, "task_id": "x"}}"#
            );
            let meta = decode_meta("celery-task-meta-x", raw.as_bytes()).expect("json");
            assert_eq!(meta, {
                let mut m = TaskMeta::new("x", TaskState::Success, json!(5));
                m.date_done = None;
                m
            });
        }
        assert!(matches!(
            decode_meta(
                "celery-task-meta-x",
                br#"{"status": "SUCCESS", "children": 3}"#
            ),
            Err(BackendError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn waiters_unsubscribe_when_their_wait_ends() {
        let Some(url) =
            celeriac_redis::testing::redis_url_or_skip("waiters_unsubscribe_when_their_wait_ends")
        else {
            return;
        };
        let prefix = format!("celeriac-test-{}:", uuid_like());
        let backend = RedisBackend::open_url(&format!("{url}?global_keyprefix={prefix}"))
            .await
            .expect("open");
        assert_eq!(
            backend
                .wait("never-stored", Duration::from_millis(50))
                .await
                .expect("wait"),
            None
        );
        assert_eq!(backend.inner.subscriber.channel_count(), 0);
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.wait("soon", Duration::from_secs(10)).await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while backend.inner.subscriber.channel_count() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter registers");
        backend
            .store(&TaskMeta::new("soon", TaskState::Success, json!(1)), None)
            .await
            .expect("store");
        let meta = waiter.await.expect("join").expect("wait").expect("ready");
        assert_eq!(meta.result, json!(1));
        assert_eq!(backend.inner.subscriber.channel_count(), 0);
        backend.forget("soon").await.expect("forget");
    }

    /// The subscription connection answers PING (sent every 200 ms under test)
    /// while subscribed, so it is kept, and still delivers.
    #[tokio::test]
    async fn an_idle_subscription_survives_its_pings() {
        let Some(url) =
            celeriac_redis::testing::redis_url_or_skip("an_idle_subscription_survives_its_pings")
        else {
            return;
        };
        let prefix = format!("celeriac-test-{}:", uuid_like());
        let backend = RedisBackend::open_url(&format!("{url}?global_keyprefix={prefix}"))
            .await
            .expect("open");
        let writer = RedisBackend::open_url(&format!("{url}?global_keyprefix={prefix}"))
            .await
            .expect("open");
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.wait("idle", Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stored_at = Instant::now();
        writer
            .store(&TaskMeta::new("idle", TaskState::Success, json!(2)), None)
            .await
            .expect("store");
        let meta = waiter.await.expect("join").expect("wait").expect("ready");
        assert_eq!(meta.result, json!(2));
        assert!(stored_at.elapsed() < Duration::from_secs(1));
        assert_eq!(
            backend.inner.subscriber.connections(),
            1,
            "no reconnect after several PINGs"
        );
        writer.forget("idle").await.expect("forget");
    }

    /// A process-unique label without a uuid dependency.
    fn uuid_like() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    }
}
