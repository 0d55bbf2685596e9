//! Counters a running worker keeps (read by the CLI, the quickstart and benchmarks).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one worker. All counts are since start.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Messages taken from the broker.
    pub received: AtomicU64,
    /// Tasks that finished running (any outcome).
    pub processed: AtomicU64,
    /// Tasks that succeeded.
    pub succeeded: AtomicU64,
    /// Tasks that failed (including time limits).
    pub failed: AtomicU64,
    /// Retries sent.
    pub retried: AtomicU64,
    /// Messages not run because expired or revoked.
    pub revoked: AtomicU64,
    /// Messages dead-lettered (undecodable, unknown task, bad arguments, rejected).
    pub dead_lettered: AtomicU64,
    /// Tasks running now.
    pub active: AtomicU64,
    /// Messages returned to the broker unstarted at shutdown.
    pub released: AtomicU64,
}

/// A point-in-time copy of [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Messages taken from the broker.
    pub received: u64,
    /// Tasks that finished running.
    pub processed: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Retries sent.
    pub retried: u64,
    /// Expired or revoked.
    pub revoked: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Running now.
    pub active: u64,
    /// Returned unstarted at shutdown.
    pub released: u64,
}

impl WorkerStats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            processed: get(&self.processed),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            revoked: get(&self.revoked),
            dead_lettered: get(&self.dead_lettered),
            active: get(&self.active),
            released: get(&self.released),
        }
    }
}
