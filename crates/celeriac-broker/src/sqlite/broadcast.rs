//! Broadcasts on the embedded broker: the one-machine equivalent of kombu's fanout
//! over Redis PUB/SUB, so remote control and events work without a server.
//!
//! - [`Broker::broadcast`](crate::Broker::broadcast) inserts one row into
//!   `broker_broadcasts` (exchange, routing key, kombu JSON envelope with
//!   `delivery_info`, time) and, in the same transaction, deletes rows older than
//!   [`BROADCAST_TTL`]. Then it wakes this process's subscribers of the file.
//! - [`Broker::subscribe`](crate::Broker::subscribe) reads the highest id when it
//!   is called (only later broadcasts are received) and starts a task that reads the
//!   newer rows of its exchange, in id order, whenever woken by a broadcast of this
//!   process and otherwise every [`SqliteBrokerOptions::poll_interval`] (at least
//!   [`MIN_POLL`]) for other processes' broadcasts. Rows whose routing key does not
//!   match the binding key are skipped. The task ends when the
//!   [`Subscription`] is dropped.
//! - A subscriber that falls more than [`BROADCAST_TTL`] behind loses the purged
//!   rows; like PUB/SUB, broadcasts are fire-and-forget.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use celeriac_core::routing::topic_matches;
use celeriac_core::Envelope;
use parking_lot::Mutex;
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, Notify};

use super::{now_ms, SqliteBroker};
use crate::{
    Broadcast, BroadcastMessage, BrokerError, SubscribeParams, Subscription, SUBSCRIPTION_BUFFER,
};

/// How long a broadcast row is kept for subscribers that poll.
pub(crate) const BROADCAST_TTL: Duration = Duration::from_secs(60);
/// The shortest pause between two polls of a subscription.
pub(crate) const MIN_POLL: Duration = Duration::from_millis(20);
/// Most rows one poll reads.
const BATCH: i64 = 512;

/// Inserts a broadcast and deletes the expired ones, in one write transaction.
fn insert(
    conn: &mut Connection,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO broker_broadcasts (exchange, routing_key, payload, published_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![exchange, routing_key, payload, now],
    )?;
    let ttl = i64::try_from(BROADCAST_TTL.as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        "DELETE FROM broker_broadcasts WHERE published_at < ?1",
        [now.saturating_sub(ttl)],
    )?;
    tx.commit()
}

/// The highest broadcast id (0 when there is none).
fn last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(id), 0) FROM broker_broadcasts",
        [],
        |row| row.get(0),
    )
}

/// Rows of `exchange` after `after`, oldest first: `(id, routing_key, payload)`.
fn after(
    conn: &Connection,
    exchange: &str,
    after: i64,
) -> rusqlite::Result<Vec<(i64, String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, routing_key, payload FROM broker_broadcasts
         WHERE exchange = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![exchange, after, BATCH], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?;
    rows.collect()
}

/// The wake-up signal of broadcasts shared by every handle of this process on the
/// same file.
fn broadcast_signal(path: &Path) -> Arc<Notify> {
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

impl SqliteBroker {
    /// [`Broker::broadcast`](crate::Broker::broadcast) of the SQLite broker.
    pub(super) async fn broadcast_row(&self, message: Broadcast) -> Result<(), BrokerError> {
        let payload = message.to_kombu_json();
        self.write(move |conn| {
            insert(
                conn,
                &message.exchange,
                &message.routing_key,
                &payload,
                now_ms(),
            )
        })
        .await?;
        broadcast_signal(self.path()).notify_waiters();
        Ok(())
    }

    /// [`Broker::subscribe`](crate::Broker::subscribe) of the SQLite broker.
    pub(super) async fn subscribe_rows(
        &self,
        params: &SubscribeParams,
    ) -> Result<Subscription, BrokerError> {
        let start = self.read(|conn| last_id(conn)).await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let poll = self.inner.options.poll_interval.max(MIN_POLL);
        tokio::spawn(listen(self.clone(), params.clone(), start, poll, tx));
        Ok(Subscription::from_receiver(rx))
    }
}

/// Serves one subscription until it is dropped.
async fn listen(
    broker: SqliteBroker,
    params: SubscribeParams,
    mut last: i64,
    poll: Duration,
    tx: mpsc::Sender<BroadcastMessage>,
) {
    let signal = broadcast_signal(broker.path());
    loop {
        // Registered before the read: a broadcast during the read still wakes us.
        let woken = signal.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let exchange = params.exchange.clone();
        let rows = match broker.read(move |conn| after(conn, &exchange, last)).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, exchange = %params.exchange, "reading broadcasts failed; retrying");
                Vec::new()
            }
        };
        let full = rows.len() as i64 >= BATCH;
        for (id, routing_key, payload) in rows {
            last = id;
            if let Some(pattern) = &params.routing_key {
                if !topic_matches(pattern, &routing_key) {
                    continue;
                }
            }
            let envelope = match Envelope::from_kombu_json(&payload) {
                Ok(envelope) => envelope,
                Err(error) => {
                    tracing::warn!(id, %error, "dropping a broadcast that is not a kombu envelope");
                    continue;
                }
            };
            let message = BroadcastMessage {
                exchange: params.exchange.clone(),
                routing_key,
                envelope,
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(poll) => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SqliteHarness;
    use crate::Broker;

    /// Another process's broadcast wakes nobody here: the subscriber finds it by
    /// polling; expired rows are purged by the next broadcast.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_is_seen_by_polling_and_old_rows_are_purged() {
        let harness = SqliteHarness::new();
        let broker = harness.sqlite_broker().await;
        let mut subscription = broker
            .subscribe(&SubscribeParams {
                exchange: "celeryev".into(),
                routing_key: Some("worker.#".into()),
            })
            .await
            .expect("subscribe");
        let message = |id: &str| Broadcast {
            exchange: "celeryev".into(),
            routing_key: "worker.heartbeat".into(),
            envelope: Envelope {
                headers: Default::default(),
                properties: Default::default(),
                content_type: "application/json".into(),
                content_encoding: "utf-8".into(),
                body: serde_json::to_vec(&serde_json::json!({ "id": id })).expect("JSON"),
            },
        };
        // A raw connection, as another process would write: no in-process wake-up.
        let mut other = Connection::open(harness.path()).expect("open the file");
        let old = now_ms() - i64::try_from(BROADCAST_TTL.as_millis()).unwrap_or(0) - 1000;
        other
            .execute(
                "INSERT INTO broker_broadcasts (exchange, routing_key, payload, published_at)
                 VALUES ('celeryev', 'worker.old', ?1, ?2)",
                params![message("old").to_kombu_json(), old],
            )
            .expect("insert an old row");
        insert(
            &mut other,
            "celeryev",
            "worker.heartbeat",
            &message("from-another-process").to_kombu_json(),
            now_ms(),
        )
        .expect("insert");
        let got = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
            .await
            .expect("found by polling")
            .expect("alive");
        let body: serde_json::Value =
            serde_json::from_slice(&got.envelope.body).expect("JSON body");
        // The old row went in the same transaction that inserted the new one.
        assert_eq!(body["id"], "from-another-process");
        assert!(subscription.try_recv().is_none());
        let left: i64 = other
            .query_row(
                "SELECT COUNT(*) FROM broker_broadcasts WHERE routing_key = 'worker.old'",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(left, 0, "rows older than the TTL are purged");
    }
}
