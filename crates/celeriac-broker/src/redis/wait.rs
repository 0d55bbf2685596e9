//! Waiting for a message without taking it: `BLMOVE list list RIGHT RIGHT` on
//! connections of their own.
//!
//! `BLMOVE` from a list to the same list and the same end blocks until the list has
//! an element, then moves it to where it was: the list is unchanged, and a reply
//! lost to a crash or a broken connection loses nothing (a `BRPOP` would have taken
//! the element out of Redis for good). The claim (`claim.lua`) is pipelined behind
//! the `BLMOVE` on the same connection: Redis holds a blocked client's next command
//! until the block ends, then runs it at once, so a message sent to an idle queue is
//! claimed without a round trip to the worker and back in between.
//!
//! A blocking command holds its whole connection, so it never runs on the shared
//! command connection. Each waiting fetch borrows an idle dedicated connection (or
//! opens one) and returns it afterwards; a connection that failed is dropped, the
//! next wait opens a new one. One wait blocks at most [`WAIT_MAX`], and the
//! connection's response timeout exceeds that, so a silent server is noticed.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use celeriac_redis::connection::{self, Timeouts};
use celeriac_redis::RedisTarget;
use parking_lot::Mutex;

use ::redis::{FromRedisValue, RedisResult, ScriptInvocation};

use super::{client_error, redis_error};
use crate::BrokerError;

/// The longest one wait blocks; longer waits issue several.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(5);

/// The shortest wait timeout sent (Redis reads 0 as "forever").
const WAIT_MIN: Duration = Duration::from_millis(10);

/// Idle dedicated connections kept for the next waits.
const MAX_IDLE: usize = 32;

/// The `CLIENT SETNAME` of the waiting connections of a broker with this key
/// prefix: `celeriac-wait` plus the prefix, non-graphic characters as `_`.
pub fn client_name(global_keyprefix: &str) -> String {
    let prefix: String = global_keyprefix
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("celeriac-wait:{prefix}")
}

/// Dedicated connections for blocking pops.
pub(crate) struct Waiters {
    target: RedisTarget,
    timeouts: Timeouts,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Waiters {
    pub fn new(target: RedisTarget, connect_timeout: Duration) -> Waiters {
        Waiters {
            target,
            timeouts: Timeouts {
                response: WAIT_MAX + Duration::from_secs(10),
                connect: connect_timeout,
            },
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Blocks until `list` has an element, for at most `timeout` (capped at
    /// [`WAIT_MAX`]), taking nothing, then runs `then` on the same connection: the
    /// two go out as one pipeline, so Redis runs `then` the moment the wait ends,
    /// without a round trip back to this process in between. A connection that
    /// fails is dropped; the next wait opens a new one.
    ///
    /// The outcomes of the two are reported apart ([`Waited`]): `then` runs even
    /// when the wait fails (say, `BLMOVE` unknown to an old Redis), and what it did
    /// must not be dropped.
    pub async fn wait_then_invoke<T: FromRedisValue>(
        &self,
        list: &str,
        timeout: Duration,
        then: &ScriptInvocation<'_>,
    ) -> Result<Waited<T>, WaitFailure> {
        let idle = self.idle.lock().pop();
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().await.map_err(|error| WaitFailure {
                error,
                stale_idle: false,
            })?,
        };
        self.wait_on(conn, list, timeout, then)
            .await
            .map_err(|error| WaitFailure {
                stale_idle: reused
                    && connection::is_connection_error(&error)
                    && !error.is_timeout(),
                error: redis_error(error),
            })
    }

    async fn open(&self) -> Result<MultiplexedConnection, BrokerError> {
        let mut conn = connection::dedicated(&self.target, self.timeouts)
            .await
            .map_err(|e| client_error(e, &self.target.display))?;
        // Named for CLIENT LIST (best effort: some managed servers refuse it).
        let named = ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(client_name(&self.target.global_keyprefix))
            .query_async::<()>(&mut conn)
            .await;
        if let Err(error) = named {
            tracing::debug!(%error, "CLIENT SETNAME refused");
        }
        Ok(conn)
    }

    /// One `BLMOVE list list RIGHT RIGHT` and `then`, pipelined on `conn`, which
    /// goes back to the idle pool if the exchange worked.
    async fn wait_on<T: FromRedisValue>(
        &self,
        mut conn: MultiplexedConnection,
        list: &str,
        timeout: Duration,
        then: &ScriptInvocation<'_>,
    ) -> Result<Waited<T>, ::redis::RedisError> {
        let seconds = timeout.clamp(WAIT_MIN, WAIT_MAX).as_secs_f64();
        let (waited, then): (RedisResult<Option<::redis::Value>>, RedisResult<T>) = ::redis::pipe()
            .ignore_errors()
            .cmd("BLMOVE")
            .arg(list)
            .arg(list)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(format!("{seconds:.3}"))
            .invoke_script(then)
            .query_async(&mut conn)
            .await?;
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(Waited {
            arrived: waited.map(|element| element.is_some()).map_err(wait_error),
            then,
        })
    }
}

/// A [`Waiters::wait_then_invoke`] whose exchange failed as a whole: what was
/// pipelined after the wait may or may not have run.
pub(crate) struct WaitFailure {
    pub error: BrokerError,
    /// The connection came from the idle pool and was found dead (Redis restarted,
    /// the connection was killed): worth one more try on a new connection.
    pub stale_idle: bool,
}

/// What a [`Waiters::wait_then_invoke`] saw.
pub(crate) struct Waited<T> {
    /// Whether an element arrived before the timeout, or why the wait failed.
    pub arrived: Result<bool, BrokerError>,
    /// The reply of what ran after the wait.
    pub then: RedisResult<T>,
}

/// A Redis error of a wait; an unknown `BLMOVE` names the Redis version needed.
fn wait_error(error: ::redis::RedisError) -> BrokerError {
    if error
        .to_string()
        .to_ascii_lowercase()
        .contains("unknown command")
    {
        return BrokerError::Storage(
            format!("waiting for messages needs BLMOVE, Redis 6.2 or later: {error}").into(),
        );
    }
    redis_error(error)
}
