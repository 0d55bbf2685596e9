//! Waiting for a message: `BRPOP` on connections of their own.
//!
//! A blocking command holds its whole connection, so it never runs on the shared
//! command connection. Each waiting fetch borrows an idle dedicated connection (or
//! opens one) and returns it afterwards; a connection that failed is dropped, the
//! next wait opens a new one. One `BRPOP` blocks at most [`BRPOP_MAX`], and the
//! connection's response timeout exceeds that, so a silent server is noticed.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use celeriac_redis::connection::{self, Timeouts};
use celeriac_redis::RedisTarget;
use parking_lot::Mutex;

use super::{client_error, redis_error};
use crate::BrokerError;

/// The longest one `BRPOP` blocks; longer waits issue several.
pub(crate) const BRPOP_MAX: Duration = Duration::from_secs(5);

/// The shortest `BRPOP` timeout sent (Redis reads 0 as "forever").
const BRPOP_MIN: Duration = Duration::from_millis(10);

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
                response: BRPOP_MAX + Duration::from_secs(10),
                connect: connect_timeout,
            },
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `BRPOP lists... timeout` (timeout capped at [`BRPOP_MAX`]): the list and the
    /// element popped, or `None` when the timeout passed. An idle connection that
    /// turns out dead (Redis restarted, the connection was killed) is replaced once:
    /// its command never reached Redis, so nothing was popped.
    pub async fn brpop(
        &self,
        lists: &[String],
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, BrokerError> {
        let idle = self.idle.lock().pop();
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        match self.brpop_on(conn, lists, timeout).await {
            Err(error)
                if reused && connection::is_connection_error(&error) && !error.is_timeout() =>
            {
                tracing::debug!(%error, "an idle BRPOP connection was dead; opening another");
                let conn = self.open().await?;
                self.brpop_on(conn, lists, timeout)
                    .await
                    .map_err(redis_error)
            }
            other => other.map_err(redis_error),
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

    /// One `BRPOP` on `conn`, which goes back to the idle pool if it worked.
    async fn brpop_on(
        &self,
        mut conn: MultiplexedConnection,
        lists: &[String],
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, ::redis::RedisError> {
        let seconds = timeout.clamp(BRPOP_MIN, BRPOP_MAX).as_secs_f64();
        let popped = ::redis::cmd("BRPOP")
            .arg(lists)
            .arg(format!("{seconds:.3}"))
            .query_async::<Option<(Vec<u8>, Vec<u8>)>>(&mut conn)
            .await?;
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(popped)
    }
}
