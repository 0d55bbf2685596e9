//! The connections a Redis component opens, each for one kind of traffic:
//!
//! - [`commands`]: a [`ConnectionManager`] (one multiplexed connection that
//!   reconnects by itself) for every non-blocking command and script, shared by all
//!   callers of a handle.
//! - [`dedicated`]: a connection of its own for one blocking command at a time
//!   (`BRPOP`): a blocking command holds its whole connection until it returns, so it
//!   must never run on the shared one. Its response timeout must exceed the command's
//!   own timeout.
//! - pub/sub (events, remote control) will need a third kind, resubscribing after a
//!   reconnect; it is opened from the same [`RedisTarget::client`].

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use crate::{RedisError, RedisTarget};

/// Timeouts of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a command may take before it fails with a timeout.
    pub response: Duration,
    /// How long connecting may take.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            response: Duration::from_secs(10),
            connect: Duration::from_secs(5),
        }
    }
}

/// The shared, self-reconnecting command connection. Fails if Redis does not answer
/// within `timeouts.connect`; afterwards a lost connection is re-established on the
/// next command (a command during the outage fails, the caller retries).
pub async fn commands(
    target: &RedisTarget,
    timeouts: Timeouts,
) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeouts.response))
        .set_connection_timeout(Some(timeouts.connect))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    Ok(target
        .client()?
        .get_connection_manager_with_config(config)
        .await?)
}

/// A connection for blocking commands, used by one command at a time. It does not
/// reconnect: drop it after an error and open another.
pub async fn dedicated(
    target: &RedisTarget,
    timeouts: Timeouts,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeouts.response))
        .set_connection_timeout(Some(timeouts.connect));
    Ok(target
        .client()?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Whether an error means the connection (not the command) failed: I/O, refused,
/// dropped, timed out.
pub fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
}
