//! The async runtime for a worker process.
//!
//! A worker's own work is I/O and short bookkeeping per message: fetches, acks,
//! result writes, events. Tasks written as plain (non-`async`) functions run on
//! tokio's blocking pool, not on the runtime's worker threads. One worker thread does
//! that work faster than several: with two, nearly every message's wake-ups cross
//! from one thread to the other (a futex wake and, on a VM, an interrupt between
//! cores), and the threads compete for the cores with a broker on the same machine.
//! On the 2-core machine of BENCHMARKS.md a one-worker Redis drain of 100,000 tasks
//! ran a median 141k tasks/s with one runtime thread against 99k/s with two (six
//! interleaved runs each), with results stored 72–82k against 67–78k/s, on SQLite
//! 64–75k against 57k/s, and the round trip was 0.36 against 0.42–0.46 ms p50.
//!
//! [`worker_runtime`] builds that runtime; `TOKIO_WORKER_THREADS` still sets another
//! count (give an app whose `async` tasks compute more threads):
//!
//! ```no_run
//! fn main() -> anyhow::Result<()> {
//!     celeriac::runtime::worker_runtime()?.block_on(async {
//!         let app = celeriac::App::builder("proj").build().await?;
//!         celeriac::cli::run(app).await
//!     })
//! }
//! ```

/// The environment variable that sets the runtime's worker threads (tokio's own).
pub const THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// A multi-thread tokio runtime with I/O and timers enabled and
/// [`worker_threads`]`(TOKIO_WORKER_THREADS)` worker threads: one unless that
/// variable says otherwise. Fails on a value that is not a count above zero.
pub fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = worker_threads(std::env::var(THREADS_ENV).ok().as_deref())?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

/// The worker threads for a configured value (`TOKIO_WORKER_THREADS`): one when
/// unset, else the value, which must be a whole number above zero.
pub fn worker_threads(configured: Option<&str>) -> std::io::Result<usize> {
    match configured {
        None => Ok(1),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(threads) if threads > 0 => Ok(threads),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{THREADS_ENV} must be a whole number above 0, got {text:?}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_thread_unless_configured() {
        assert_eq!(worker_threads(None).expect("default"), 1);
        assert_eq!(worker_threads(Some("4")).expect("four"), 4);
        assert_eq!(worker_threads(Some(" 2 ")).expect("two"), 2);
        for bad in ["0", "-1", "many", ""] {
            let error = worker_threads(Some(bad)).expect_err(bad).to_string();
            assert!(error.contains(THREADS_ENV), "{error}");
        }
    }

    #[test]
    fn the_runtime_runs_futures_and_timers() {
        let runtime = worker_runtime().expect("runtime");
        let slept = runtime.block_on(async {
            let started = tokio::time::Instant::now();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            started.elapsed()
        });
        assert!(slept >= std::time::Duration::from_millis(5));
    }
}
