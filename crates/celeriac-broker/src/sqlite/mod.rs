//! The embedded broker: one SQLite file in WAL mode, shared by every worker process on
//! the machine (`sqlite://celeriac.db`).
//!
//! # Schema
//!
//! The schema lives in `migrations/*.sql`, embedded in the binary and applied in order
//! when a broker opens the file. Applied versions are recorded in
//! `celeriac_schema(component, version)` under the component `'broker'`; the result
//! backend may share the file and the table with its own component.
//!
//! - `broker_messages`: one row per message from publish to ack. The payload is kombu's
//!   JSON envelope ([`Envelope::to_kombu_json`](celeriac_core::Envelope::to_kombu_json)) in a BLOB, beside the columns the
//!   broker works with: `queue`, `priority`, `not_before` (the ETA, Unix ms), `state`
//!   (`ready`, `scheduled`, `held`), `lease_until`, `consumer`, `delivery_count`,
//!   `lease_token` and `published_at`. Messages are served by `priority` (higher
//!   first, [`PriorityOrder::HigherFirst`]), then by `id` (publish order). Partial
//!   indexes serve the fetch path (`state = 'ready'`, by queue, priority and id), the
//!   promotion of due ETA messages (`state = 'scheduled'`, by queue and `not_before`)
//!   and lease expiry (`state = 'held'`, by `lease_until`).
//! - `broker_dead_letters`: messages rejected with [`RejectAction::DeadLetter`] and
//!   payloads that do not decode, with the reason and time.
//! - `broker_bindings`: declared queues with their exchange and routing key.
//! - `broker_broadcasts`: broadcasts (events, remote control), read by subscribers
//!   from their last seen id and deleted after a minute (see `broadcast.rs`).
//!
//! ETA messages wait in the broker as `scheduled` rows, not in worker memory: a fetch
//! first turns the due ones of its queues into `ready` rows (keeping their id, so a due
//! ETA message is not queued behind everything published after it), then claims. A
//! `ready` row is therefore always due, and the fetch does not read `not_before`.
//!
//! A publish stores its batch with multi-row `INSERT`s (64 rows a statement). A fetch
//! claims each queue's rows with one `UPDATE … RETURNING`; an ack deletes, and a
//! renewal updates, all of its tags with one statement (the tags passed as a JSON
//! array, each row found by its id). The payloads are decoded after the claim's
//! transaction, off the writer's thread; one that does not decode is then moved to
//! `broker_dead_letters` in a second transaction (not counted as a delivery) and the
//! fetch claims again for its place. Should the process die between the two, the
//! lease lapses and a later fetch dead-letters it.
//!
//! # Leases and delivery tags
//!
//! A fetch claims rows by setting `state = 'held'`, `lease_until = now + lease`, the
//! consumer, `delivery_count + 1` and `lease_token + 1`. The delivery tag is
//! `"{id}.{lease_token}"`, and every operation on a delivery (ack, reject, renew)
//! matches `id`, `lease_token` and `state = 'held'`. Ids are never reused
//! (`AUTOINCREMENT`) and the token only grows, so a tag names exactly one delivery: once
//! the lease lapsed and [`Broker::restore_expired`] put the message back, the old
//! holder's ack, reject or renew matches no row and is a no-op, and the new holder keeps
//! the message.
//!
//! - `restore_expired` puts held rows with `lease_until < now` back to `ready` in place
//!   (they keep their id, hence their position); the next fetch counts a new delivery.
//! - `reject(Requeue)` re-inserts the message as a new row (a new id: the end of the
//!   queue), keeping its delivery count.
//! - `reject(Release)` puts it back in place and takes back the delivery count of the
//!   delivery it ends, as if it had never been taken (unstarted messages at shutdown
//!   are not "redelivered"). The lease token still grows, so the released tag is dead.
//! - `reject(DeadLetter)` moves it to `broker_dead_letters`.
//!
//! # Several processes on one file
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
//! before reading. A fetch therefore reads and claims its rows while no other
//! connection (of this process or another) can write, and two consumers can never be
//! handed the same message. Other connections wait for the lock up to
//! [`SqliteBrokerOptions::busy_timeout`]. WAL mode lets readers (stats, dead-letter
//! listings) run while a writer works, and `synchronous = NORMAL` makes a commit cost
//! no `fsync` (a power loss may lose the last commits, never corrupt the file). The
//! file must be on a local file system: WAL needs shared memory between processes.
//!
//! Each broker handle keeps three connections, each on a thread of its own: the
//! writer, a reader, and a checkpointer that copies the WAL back into the file
//! (`PRAGMA wal_checkpoint(PASSIVE)`, about once per 50 ms while writes go on), so
//! the writer's commits no longer do that copying and its `fsync`s. A passive
//! checkpoint never waits for or blocks readers and writers; the writer's own
//! automatic checkpoint stays as a backstop at 4,000 WAL pages (16 MiB), which keeps
//! the WAL bounded when the checkpointer cannot catch up with a busy writer.
//!
//! # Waiting
//!
//! A fetch that finds nothing waits up to [`FetchParams::wait`]. Publishes (and
//! requeues, releases, restores) by any broker handle of this process on the same file
//! wake it at once. Writes of other processes are noticed by polling
//! `PRAGMA data_version` (a read of shared memory, no I/O) every
//! [`SqliteBrokerOptions::poll_interval`]; the fetch query only runs again when the
//! file changed, when an ETA message of its queues becomes due, or when woken.
//!
//! # Fairness
//!
//! With several queues in [`FetchParams::queues`], each fetch of a handle starts at the
//! next queue in turn (as kombu's round-robin cycle does) and takes from the following
//! queues while it has room, so one busy queue cannot starve the others.

mod broadcast;
mod migrate;
mod store;
#[cfg(test)]
mod tests;
mod thread;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::routing::Queue;
use celeriac_core::Envelope;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    Broker, BrokerError, Capabilities, DeadLetter, DeadLetterQuery, Delivery, DeliveryTag,
    FetchParams, PriorityOrder, Publish, QueueStats, RejectAction, WorkerInfo,
};

use store::{ClaimParams, NewMessage, Rejection, Tag};
use thread::ConnectionThread;

/// Errors of the SQLite store, wrapped in [`BrokerError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file was migrated by a newer celeriac than this one.
    #[error("the broker schema in this file is version {found}, newer than this celeriac knows ({known}); upgrade celeriac")]
    SchemaTooNew {
        /// Highest version recorded in `celeriac_schema`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> BrokerError {
        BrokerError::storage(error)
    }
}

/// The reader connection's page cache, in KiB (as a negative `cache_size`).
const READER_CACHE_KIB: i64 = -256;

/// How long the checkpointer waits after a write before it checkpoints, so one
/// checkpoint covers the writes of that time (see [`SqliteBroker::schedule_checkpoint`]).
const CHECKPOINT_DELAY: Duration = Duration::from_millis(50);

/// The writer's own automatic checkpoint, in WAL pages (SQLite's default is 1,000):
/// the backstop that keeps the WAL bounded when the checkpointer never catches up
/// with a busy writer. It then copies only what the checkpointer had not.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 4_000;

/// Settings of a [`SqliteBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteBrokerOptions {
    /// How often a waiting fetch checks the file for writes of other processes
    /// (default 10 ms, at least 1 ms). Writes through this process are seen at once.
    pub poll_interval: Duration,
    /// How long an operation waits for another connection's write lock before failing
    /// (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteBrokerOptions {
    fn default() -> Self {
        SqliteBrokerOptions {
            poll_interval: Duration::from_millis(10),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The embedded SQLite broker. See the [module docs](self) for the schema, the lease
/// scheme and why several processes can share the file.
///
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteBrokerOptions,
    /// All writes, serialized in this process (SQLite serializes them across
    /// processes), on a thread of their own (see `thread.rs`: keeping a connection on
    /// one thread keeps the worker's heap flat).
    writer: ConnectionThread,
    /// Stats, dead-letter listings and `data_version` polls, which then never wait
    /// behind a write of this process; a thread of its own too.
    reader: ConnectionThread,
    /// Copies the WAL back into the database file (`PRAGMA wal_checkpoint(PASSIVE)`)
    /// shortly after writes, on a third thread, so the writer's commits do not.
    checkpointer: ConnectionThread,
    /// A checkpoint is queued on `checkpointer` and has not started yet.
    checkpoint_queued: Arc<AtomicBool>,
    /// Woken when a message may have become ready; shared by every handle of this
    /// process on the same file.
    ready: Arc<Notify>,
    /// Where the next multi-queue fetch starts.
    next_queue: AtomicUsize,
    /// Claim transactions run by fetches (to check that waiting does not spin).
    claim_attempts: AtomicU64,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl SqliteBroker {
    /// Opens the broker named by a URL: everything after `sqlite://` is the path
    /// (`sqlite:///abs/x.db` is `/abs/x.db`, `sqlite://rel.db` is `rel.db`), with
    /// default options.
    pub async fn open_url(url: &str) -> Result<SqliteBroker, BrokerError> {
        let path = parse_url(url)?;
        SqliteBroker::open(path, SqliteBrokerOptions::default()).await
    }

    /// Opens (creating if needed) the broker file at `path` and applies the pending
    /// migrations. The parent directory must exist.
    pub async fn open(
        path: impl AsRef<Path>,
        options: SqliteBrokerOptions,
    ) -> Result<SqliteBroker, BrokerError> {
        let path = path.as_ref().to_path_buf();
        if path.as_os_str().is_empty() || path == Path::new(":memory:") {
            return Err(BrokerError::InvalidUrl {
                url: format!("sqlite://{}", path.display()),
                reason:
                    "the SQLite broker needs a file path (an in-memory database cannot be shared)"
                        .into(),
            });
        }
        let opened = {
            let path = path.clone();
            let options = options.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                // Two processes creating a new file at once can see SQLITE_BUSY while
                // one switches it to WAL (that step does not wait on busy_timeout):
                // retry the whole open for up to the busy timeout.
                let deadline = std::time::Instant::now() + options.busy_timeout;
                let mut pause = Duration::from_millis(5);
                loop {
                    let attempt = (|| -> Result<_, StoreError> {
                        let mut writer = open_connection(&path, &options)?;
                        let applied = migrate::migrate(&mut writer)?;
                        if !applied.is_empty() {
                            tracing::info!(path = %path.display(), versions = ?applied, "applied broker migrations");
                        }
                        writer.pragma_update(
                            None,
                            "wal_autocheckpoint",
                            WRITER_AUTOCHECKPOINT_PAGES,
                        )?;
                        let reader = open_connection(&path, &options)?;
                        // Every commit of the writer (or of another process) empties
                        // the reader's page cache at its next read, so a large one
                        // only adds heap: a queue_stats count over a deep queue
                        // filled SQLite's default 2 MiB after each write.
                        reader.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
                        // Checkpoints read the WAL and write the file directly; the
                        // page cache holds little more than the schema.
                        let checkpointer = open_connection(&path, &options)?;
                        checkpointer.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
                        Ok((writer, reader, checkpointer))
                    })();
                    match attempt {
                        Err(error)
                            if error.to_string().contains("locked")
                                && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(200));
                        }
                        other => return other,
                    }
                }
            })
            .await
            .map_err(BrokerError::storage)?
        };
        let (writer, reader, checkpointer) = opened?;
        let writer =
            ConnectionThread::spawn("celeriac-sqlite-w", writer).map_err(BrokerError::storage)?;
        let reader =
            ConnectionThread::spawn("celeriac-sqlite-r", reader).map_err(BrokerError::storage)?;
        let checkpointer = ConnectionThread::spawn("celeriac-sqlite-c", checkpointer)
            .map_err(BrokerError::storage)?;
        let ready = ready_signal(&path);
        Ok(SqliteBroker {
            inner: Arc::new(Inner {
                path,
                options,
                writer,
                reader,
                checkpointer,
                checkpoint_queued: Arc::new(AtomicBool::new(false)),
                ready,
                next_queue: AtomicUsize::new(0),
                claim_attempts: AtomicU64::new(0),
            }),
        })
    }

    /// The path of the broker file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores raw bytes as a ready message of `queue`, bypassing the envelope codec
    /// (for tests of malformed payloads and for tools importing foreign messages).
    pub async fn insert_raw(&self, queue: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let queue = queue.to_string();
        let payload = payload.to_vec();
        self.write(move |conn| store::insert_raw(conn, &queue, &payload, now_ms()))
            .await?;
        self.inner.ready.notify_waiters();
        Ok(())
    }

    /// Runs `f` on the writer connection, on its thread, then schedules a checkpoint.
    async fn write<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let result = self.inner.writer.call(f).await;
        self.schedule_checkpoint();
        result
    }

    /// Queues a passive checkpoint on the checkpointer's thread, [`CHECKPOINT_DELAY`]
    /// from now, unless one is queued already: a busy writer gets about one
    /// checkpoint per delay, run beside it instead of inside one of its commits. A
    /// passive checkpoint never waits for (or blocks) readers and writers; what it
    /// could not copy, the next one or the writer's own backstop
    /// ([`WRITER_AUTOCHECKPOINT_PAGES`]) does.
    fn schedule_checkpoint(&self) {
        if self.inner.checkpoint_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let queued = self.inner.checkpoint_queued.clone();
        self.inner.checkpointer.submit(move |conn| {
            std::thread::sleep(CHECKPOINT_DELAY);
            // Writes from now on queue the next checkpoint.
            queued.store(false, Ordering::Release);
            if let Err(error) = store::checkpoint(conn) {
                tracing::debug!(%error, "background WAL checkpoint failed");
            }
        });
    }

    /// Runs `f` on the reader connection, on its thread.
    async fn read<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.inner.reader.call(f).await
    }

    /// One claim attempt without waiting: claims, then decodes the payloads here (off
    /// the writer's thread, which then serves the next write) and moves the ones that
    /// do not decode to the dead letters; claims again for the places they left.
    async fn try_fetch(&self, params: &FetchParams) -> Result<Claimed, BrokerError> {
        self.inner.claim_attempts.fetch_add(1, Ordering::Relaxed);
        let start = self.inner.next_queue.fetch_add(1, Ordering::Relaxed) % params.queues.len();
        let mut queues = params.queues.clone();
        queues.rotate_left(start);
        let queues = Arc::new(queues);
        let lease = millis(params.lease);
        let mut deliveries = Vec::new();
        loop {
            let wanted = params.max - deliveries.len();
            let claimed = {
                let queues = queues.clone();
                let consumer = params.consumer.clone();
                self.write(move |conn| {
                    let now = now_ms();
                    store::claim(
                        conn,
                        &ClaimParams {
                            queues: &queues,
                            max: wanted,
                            consumer: &consumer,
                            lease_until: now.saturating_add(lease),
                            now,
                        },
                    )
                })
                .await?
            };
            let read = claimed.rows.len();
            let undecodable = decode_claimed(claimed.rows, &queues, &mut deliveries);
            if undecodable.is_empty() {
                return Ok(Claimed {
                    deliveries,
                    next_due: claimed.next_due,
                });
            }
            self.write(move |conn| store::dead_letter_undecodable(conn, &undecodable, now_ms()))
                .await?;
            if read < wanted {
                // The queues had no more.
                return Ok(Claimed {
                    deliveries,
                    next_due: None,
                });
            }
        }
    }
}

/// What one claim attempt got.
struct Claimed {
    deliveries: Vec<Delivery>,
    /// When the next ETA message of the fetched queues is due (only when nothing was
    /// claimed).
    next_due: Option<i64>,
}

/// Decodes claimed rows into `deliveries`; returns the tags of the ones that do not
/// decode, with the reason.
fn decode_claimed(
    rows: Vec<store::ClaimedRow>,
    queues: &[String],
    deliveries: &mut Vec<Delivery>,
) -> Vec<(Tag, String)> {
    let mut undecodable = Vec::new();
    deliveries.reserve(rows.len());
    for row in rows {
        let queue = queues.get(row.queue).cloned().unwrap_or_default();
        match Envelope::from_kombu_json(&row.payload) {
            Ok(envelope) => deliveries.push(Delivery {
                tag: row.tag.to_delivery_tag(),
                queue,
                envelope,
                delivery_count: u32::try_from(row.delivery_count).unwrap_or(u32::MAX),
            }),
            Err(error) => {
                let reason = format!("payload cannot be decoded: {error}");
                tracing::warn!(queue = %queue, message_id = row.tag.id, %reason, "dead-lettering message");
                undecodable.push((row.tag, reason));
            }
        }
    }
    undecodable
}

#[async_trait]
impl Broker for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: true,
            leases: true,
            priority: PriorityOrder::HigherFirst,
            dead_letters: true,
            idempotent_publish: true,
        }
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.path.display())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<(), BrokerError> {
        let name = queue.name.clone();
        let exchange = queue.exchange.name.clone();
        let kind = serde_json::to_value(queue.exchange.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", queue.exchange.kind).to_lowercase());
        let routing_key = queue.routing_key.clone();
        self.write(move |conn| {
            store::declare(conn, &name, &exchange, &kind, &routing_key, now_ms())
        })
        .await
    }

    async fn publish(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        // Serialized by the caller: the writer thread is the one every publish, fetch
        // and ack of the file waits for, so it only runs the statements (a batch's
        // caller can prepare its next chunk meanwhile, see `App::send_batch`).
        let rows = new_messages(messages);
        self.write(move |conn| store::publish(conn, &rows, now_ms()))
            .await?;
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn publish_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Publish>,
    ) -> Result<bool, BrokerError> {
        let key = key.to_string();
        let rows = new_messages(messages);
        let stored = self
            .write(move |conn| {
                let now = now_ms();
                let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                let marker = store::OnceMarker {
                    key,
                    expires_at: now.saturating_add(window.max(1)),
                };
                store::publish_once(conn, &marker, &rows, now)
            })
            .await?;
        if stored {
            self.inner.ready.notify_waiters();
        }
        Ok(stored)
    }

    async fn fetch(&self, params: &FetchParams) -> Result<Vec<Delivery>, BrokerError> {
        if params.max == 0 || params.queues.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = later(Instant::now(), params.wait);
        // Never below 1 ms: a zero interval would spin.
        let poll_interval = self
            .inner
            .options
            .poll_interval
            .max(Duration::from_millis(1));
        // Taken before the first attempt, so a write between the attempt and the
        // first poll is not missed.
        let mut version = if params.wait.is_zero() {
            0
        } else {
            self.read(|conn| store::data_version(conn)).await?
        };
        loop {
            // Registered before the attempt: a publish during the attempt still wakes us.
            let woken = self.inner.ready.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let claimed = self.try_fetch(params).await?;
            if !claimed.deliveries.is_empty() || Instant::now() >= deadline {
                return Ok(claimed.deliveries);
            }
            let due_at = claimed.next_due.map(|due| {
                let in_ms = u64::try_from(due.saturating_sub(now_ms()))
                    .unwrap_or(0)
                    .max(1);
                Instant::now() + Duration::from_millis(in_ms)
            });
            // Sleep until woken, until an ETA message is due, or until another process
            // changed the file; give up at the deadline.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let mut until = deadline.min(later(now, poll_interval));
                if let Some(due_at) = due_at {
                    until = until.min(due_at);
                }
                tokio::select! {
                    () = &mut woken => break,
                    () = tokio::time::sleep_until(until) => {}
                }
                if due_at.is_some_and(|due_at| Instant::now() >= due_at) {
                    break;
                }
                let current = self.read(|conn| store::data_version(conn)).await?;
                if current != version {
                    version = current;
                    break;
                }
            }
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let tags = parse_tags(tags);
        if tags.is_empty() {
            return Ok(());
        }
        self.write(move |conn| store::ack(conn, &tags)).await?;
        Ok(())
    }

    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError> {
        let Some(parsed) = Tag::parse(tag) else {
            tracing::warn!(tag = %tag, "reject with a tag this broker never issued; ignored");
            return Ok(());
        };
        let makes_ready = !matches!(action, RejectAction::DeadLetter { .. });
        let done = self
            .write(move |conn| {
                let rejection = match &action {
                    RejectAction::Requeue => Rejection::Requeue,
                    RejectAction::Release => Rejection::Release,
                    RejectAction::DeadLetter { reason } => Rejection::DeadLetter { reason },
                };
                store::reject(conn, parsed, rejection, now_ms())
            })
            .await?;
        if !done {
            tracing::debug!(tag = %tag, "reject with a stale tag; ignored");
        } else if makes_ready {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }

    async fn renew_leases(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        let tags = parse_tags(tags);
        if tags.is_empty() {
            return Ok(());
        }
        let lease = millis(lease);
        self.write(move |conn| store::renew(conn, &tags, now_ms().saturating_add(lease)))
            .await?;
        Ok(())
    }

    async fn restore_expired(&self) -> Result<u64, BrokerError> {
        let restored = self
            .write(|conn| store::restore_expired(conn, now_ms()))
            .await?;
        if restored > 0 {
            tracing::info!(restored, "restored messages whose lease lapsed");
            self.inner.ready.notify_waiters();
        }
        Ok(restored)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let queue = queue.to_string();
        self.write(move |conn| store::purge(conn, &queue)).await
    }

    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        let queues = queues.to_vec();
        self.read(move |conn| store::queue_stats(conn, &queues, now_ms()))
            .await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError> {
        let query = query.clone();
        self.read(move |conn| store::dead_letters(conn, &query))
            .await
    }

    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).map_err(BrokerError::storage)?;
        let hostname = info.hostname.clone();
        let at = info.last_heartbeat.timestamp_millis();
        let online = info.online;
        self.write(move |conn| store::upsert_worker(conn, &hostname, &json, at, online))
            .await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let rows = self.read(store::workers).await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(hostname, json)| match serde_json::from_str::<WorkerInfo>(&json) {
                    Ok(info) => Some(info),
                    Err(error) => {
                        tracing::warn!(%hostname, %error, "unreadable worker row ignored");
                        None
                    }
                },
            )
            .collect())
    }

    async fn broadcast(&self, message: crate::Broadcast) -> Result<(), BrokerError> {
        self.broadcast_row(message).await
    }

    async fn subscribe(
        &self,
        params: &crate::SubscribeParams,
    ) -> Result<crate::Subscription, BrokerError> {
        self.subscribe_rows(params).await
    }
}

/// The path of a `sqlite://PATH` URL.
pub(crate) fn parse_url(url: &str) -> Result<PathBuf, BrokerError> {
    let invalid = |reason: &str| BrokerError::InvalidUrl {
        url: crate::redact(url),
        reason: reason.to_string(),
    };
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| invalid("expected sqlite://PATH"))?;
    if path.is_empty() {
        return Err(invalid("the path is empty (expected sqlite://PATH)"));
    }
    Ok(PathBuf::from(path))
}

/// Opens one connection with the broker's settings.
fn open_connection(path: &Path, options: &SqliteBrokerOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(options.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL mode; writers will block readers");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Truncate the WAL file back to 64 MiB after a checkpoint that followed a burst.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The wake-up signal shared by every handle of this process on the same file.
fn ready_signal(path: &Path) -> Arc<Notify> {
    static SIGNALS: OnceLock<Mutex<HashMap<PathBuf, Weak<Notify>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut signals = SIGNALS.get_or_init(Mutex::default).lock();
    if let Some(signal) = signals.get(&key).and_then(Weak::upgrade) {
        return signal;
    }
    signals.retain(|_, signal| signal.strong_count() > 0);
    let signal = Arc::new(Notify::new());
    signals.insert(key, Arc::downgrade(&signal));
    signal
}

fn parse_tags(tags: &[DeliveryTag]) -> Vec<Tag> {
    tags.iter()
        .filter_map(|tag| {
            let parsed = Tag::parse(tag);
            if parsed.is_none() {
                tracing::warn!(tag = %tag, "a tag this broker never issued; ignored");
            }
            parsed
        })
        .collect()
}

/// `at + duration`, or a century later when that overflows (`Duration::MAX` waits).
fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Rows for a publish, serialized by the caller (the writer thread only runs statements).
fn new_messages(messages: Vec<Publish>) -> Vec<NewMessage> {
    messages
        .into_iter()
        .map(|m| NewMessage {
            priority: i64::from(m.envelope.properties.priority.unwrap_or(0)),
            not_before: m.not_before.map_or(0, |t| t.timestamp_millis()),
            payload: m.envelope.to_kombu_json(),
            queue: m.queue,
        })
        .collect()
}
