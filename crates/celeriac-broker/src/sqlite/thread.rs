//! A SQLite connection owned by a thread of its own.
//!
//! The broker's connections used to run their calls in tokio's blocking pool
//! (`spawn_blocking` behind a mutex). Every call could then land on another pool
//! thread, and while one call held the connection the others each blocked a thread of
//! their own, so a busy worker kept about nine pool threads. glibc gives each thread
//! that allocates a malloc arena of its own: SQLite's page cache (≈ 2 MiB a
//! connection, one 4 KiB page per allocation, freed and refilled whenever another
//! connection wrote) and the claimed payloads were spread over all of those arenas,
//! each kept its own fragmented free memory, and the worker's heap grew with the
//! tasks it ran (issue 9: RssAnon 9.5 MiB after a 10k drain, 18.9 MiB after a 1M
//! one, still ≈ +1.5 MiB per million at 3M; 9.1 MiB at 1M with this module). Here
//! each connection lives on one thread for its whole life, so its allocations stay
//! in one arena, and calls queue in a channel instead of each blocking a thread.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::BrokerError;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle of a connection thread. The thread ends (closing the connection) once
/// every handle is dropped and the calls already queued have run.
pub(super) struct ConnectionThread {
    jobs: mpsc::Sender<Job>,
}

impl ConnectionThread {
    /// Moves `conn` onto a new thread named `name`.
    pub(super) fn spawn(name: &str, mut conn: Connection) -> std::io::Result<ConnectionThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A panicking call fails that call only (its caller sees the
                    // reply dropped); the connection stays usable, as it did behind
                    // the mutex.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                }
            })?;
        Ok(ConnectionThread { jobs })
    }

    /// Runs `f` on the connection after the calls queued before it. When the returned
    /// future is dropped, `f` still runs (as a `spawn_blocking` call would).
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| BrokerError::storage(Stopped))?;
        result
            .await
            .map_err(|_| BrokerError::storage(Stopped))?
            .map_err(BrokerError::storage)
    }
}

impl ConnectionThread {
    /// Queues `f` to run on the connection without waiting for it (its result and any
    /// error are dropped: for housekeeping such as checkpoints). Returns false when
    /// the thread has ended.
    pub(super) fn submit<F>(&self, f: F) -> bool
    where
        F: FnOnce(&mut Connection) + Send + 'static,
    {
        self.jobs.send(Box::new(f)).is_ok()
    }
}

/// The connection thread ended, or the call panicked.
#[derive(Debug, thiserror::Error)]
#[error("the SQLite connection thread stopped, or the call panicked")]
struct Stopped;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_on_one_thread_and_survive_a_panic() {
        let conn = Connection::open_in_memory().expect("open");
        let thread = ConnectionThread::spawn("test-sqlite", conn).expect("spawn");
        let first = thread
            .call(|_| Ok(std::thread::current().id()))
            .await
            .expect("first");
        let panicked = thread
            .call::<(), _>(|_| panic!("boom"))
            .await
            .expect_err("the panicking call fails");
        assert!(panicked.to_string().contains("panicked"), "{panicked}");
        let (second, answer) = thread
            .call(|conn| {
                let answer: i64 = conn.query_row("SELECT 6 * 7", [], |row| row.get(0))?;
                Ok((std::thread::current().id(), answer))
            })
            .await
            .expect("after the panic");
        assert_eq!((first, answer), (second, 42));
        assert_ne!(first, std::thread::current().id());
    }
}
