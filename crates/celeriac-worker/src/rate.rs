//! Per-task-type rate limits: starts are spaced evenly at the limit's interval.

use std::collections::HashMap;
use std::sync::Arc;

use celeriac_core::RateLimit;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Rate limiters by task name.
#[derive(Default)]
pub struct RateLimiters {
    next_start: Mutex<HashMap<String, Instant>>,
    overrides: Mutex<HashMap<String, Option<RateLimit>>>,
}

impl RateLimiters {
    /// Shared empty limiters.
    pub fn new() -> Arc<RateLimiters> {
        Arc::new(RateLimiters::default())
    }

    /// Sets or clears (`None`) a runtime limit for `task`, overriding its declared one.
    pub fn set(&self, task: &str, limit: Option<RateLimit>) {
        self.overrides.lock().insert(task.to_string(), limit);
    }

    /// Waits until `task` may start under `declared` (or its runtime override).
    pub async fn acquire(&self, task: &str, declared: Option<RateLimit>) {
        if let Some(start) = self.reserve(task, declared) {
            tokio::time::sleep_until(start).await;
        }
    }

    /// Reserves the next start of `task` under `declared` (or its runtime override):
    /// when it may start, or `None` when it is not limited.
    pub fn reserve(&self, task: &str, declared: Option<RateLimit>) -> Option<Instant> {
        let limit = match self.overrides.lock().get(task) {
            Some(runtime) => *runtime,
            None => declared,
        }?;
        let mut next = self.next_start.lock();
        let now = Instant::now();
        let slot = next.get(task).copied().filter(|t| *t > now).unwrap_or(now);
        next.insert(task.to_string(), slot + limit.interval());
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_interval() {
        let limiters = RateLimiters::new();
        let limit = RateLimit::parse("10/s").ok();
        let begin = Instant::now();
        for _ in 0..5 {
            limiters.acquire("t", limit).await;
        }
        // Five starts at 10/s: the fifth starts 400 ms after the first.
        assert_eq!(Instant::now() - begin, Duration::from_millis(400));
        // Other task names are not limited.
        let before = Instant::now();
        limiters.acquire("other", None).await;
        assert_eq!(Instant::now(), before);
        // A runtime override replaces the declared limit.
        limiters.set("t", None);
        let before = Instant::now();
        limiters.acquire("t", limit).await;
        assert_eq!(Instant::now(), before);
    }
}
