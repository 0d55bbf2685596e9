//! Waiting for a message without taking it: `BLMOVE list list RIGHT RIGHT` on
//! connections of their own.
//!
//! `BLMOVE` from a list to the same list and the same end blocks until the list has
//! an element, then moves it to where it was: the list is unchanged, and a reply
//! lost to a crash or a broken connection loses nothing (a `BRPOP` would have taken
//! the element out of Redis for good). The caller then claims with `claim.lua`.
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
    /// [`WAIT_MAX`]), taking nothing: `true` when an element is there, `false` when
    /// the timeout passed. An idle connection that turns out dead (Redis restarted,
    /// the connection was killed) is replaced once.
    pub async fn wait_for_element(
        &self,
        list: &str,
        timeout: Duration,
    ) -> Result<bool, BrokerError> {
        let idle = self.idle.lock().pop();
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        match self.wait_on(conn, list, timeout).await {
            Err(error)
                if reused && connection::is_connection_error(&error) && !error.is_timeout() =>
            {
                tracing::debug!(%error, "an idle waiting connection was dead; opening another");
                let conn = self.open().await?;
                self.wait_on(conn, list, timeout).await.map_err(wait_error)
            }
            other => other.map_err(wait_error),
        }
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

    /// One `BLMOVE list list RIGHT RIGHT` on `conn`, which goes back to the idle
    /// pool if it worked.
    async fn wait_on(
        &self,
        mut conn: MultiplexedConnection,
        list: &str,
        timeout: Duration,
    ) -> Result<bool, ::redis::RedisError> {
        let seconds = timeout.clamp(WAIT_MIN, WAIT_MAX).as_secs_f64();
        let element = ::redis::cmd("BLMOVE")
            .arg(list)
            .arg(list)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(format!("{seconds:.3}"))
            .query_async::<Option<::redis::Value>>(&mut conn)
            .await?;
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(element.is_some())
    }
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
