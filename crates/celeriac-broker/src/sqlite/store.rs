//! The broker's SQL, run on a blocking connection. Every write is one
//! `BEGIN IMMEDIATE` transaction: the write lock is taken before anything is read, so
//! no other connection (in this process or another) can claim the same rows between
//! our read and our update.

use celeriac_core::Envelope;
use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::{DeadLetter, DeadLetterQuery, Delivery, DeliveryTag, QueueStats};

/// A message ready to insert: the payload is serialized before the lock is taken.
pub(super) struct NewMessage {
    pub queue: String,
    pub priority: i64,
    /// Unix milliseconds (0 = deliverable now).
    pub not_before: i64,
    pub payload: Vec<u8>,
}

/// What a fetch claimed, and when the next ETA message of its queues becomes due.
pub(super) struct Claimed {
    pub deliveries: Vec<Delivery>,
    /// Unix milliseconds of the earliest scheduled message of the fetched queues, when
    /// nothing was claimed.
    pub next_due: Option<i64>,
}

/// Parameters of one claim attempt.
pub(super) struct ClaimParams<'a> {
    /// Queues, already rotated into the order to try them.
    pub queues: &'a [String],
    pub max: usize,
    pub consumer: &'a str,
    /// Unix milliseconds the leases end.
    pub lease_until: i64,
    pub now: i64,
}

/// A delivery tag split into the message id and the lease token of that delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag {
    pub id: i64,
    pub token: i64,
}

impl Tag {
    /// Formats the tag handed to consumers.
    pub fn to_delivery_tag(self) -> DeliveryTag {
        DeliveryTag(format!("{}.{}", self.id, self.token))
    }

    /// Parses a tag made by [`Tag::to_delivery_tag`]; `None` for anything else.
    pub fn parse(tag: &DeliveryTag) -> Option<Tag> {
        let (id, token) = tag.0.split_once('.')?;
        Some(Tag {
            id: id.parse().ok()?,
            token: token.parse().ok()?,
        })
    }
}

// ---- statements -------------------------------------------------------------------

const INSERT_MESSAGE: &str = "INSERT INTO broker_messages
    (queue, priority, state, not_before, published_at, payload)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Due ETA messages of one queue become ready, keeping their id (their place).
const PROMOTE_DUE: &str = "UPDATE broker_messages SET state = 'ready'
    WHERE state = 'scheduled' AND queue = ?1 AND not_before <= ?2";

/// The fetch path; served by the partial index `broker_messages_ready` without a sort.
pub(super) const SELECT_READY: &str = "SELECT id, payload, delivery_count, lease_token
    FROM broker_messages
    WHERE state = 'ready' AND queue = ?1 AND not_before <= ?2
    ORDER BY priority DESC, id
    LIMIT ?3";

const CLAIM: &str = "UPDATE broker_messages
    SET state = 'held', lease_until = ?2, consumer = ?3,
        delivery_count = delivery_count + 1, lease_token = lease_token + 1
    WHERE id = ?1";

const NEXT_DUE: &str = "SELECT MIN(not_before) FROM broker_messages
    WHERE state = 'scheduled' AND queue = ?1";

/// Copies a message (any state) to the dead letters; `?1` id, `?2` reason, `?3` now.
const COPY_TO_DEAD_LETTERS: &str = "INSERT INTO broker_dead_letters
    (queue, reason, dead_at, message_id, delivery_count, published_at, payload)
    SELECT queue, ?2, ?3, id, delivery_count, published_at, payload
    FROM broker_messages WHERE id = ?1";

/// Copies a held delivery to the dead letters; `?1` id, `?2` token, `?3` reason, `?4` now.
const HELD_TO_DEAD_LETTERS: &str = "INSERT INTO broker_dead_letters
    (queue, reason, dead_at, message_id, delivery_count, published_at, payload)
    SELECT queue, ?3, ?4, id, delivery_count, published_at, payload
    FROM broker_messages WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

const DELETE_BY_ID: &str = "DELETE FROM broker_messages WHERE id = ?1";

const DELETE_HELD: &str =
    "DELETE FROM broker_messages WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

/// Requeue: the same message as a new row (new id: the end of its queue). The
/// delivery count is kept; the lease token restarts with the new id.
const REQUEUE_HELD: &str = "INSERT INTO broker_messages
    (queue, priority, state, not_before, delivery_count, published_at, payload)
    SELECT queue, priority, 'ready', not_before, delivery_count, published_at, payload
    FROM broker_messages WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

/// Release: back to ready in place, as if never taken (the delivery is not counted).
const RELEASE_HELD: &str = "UPDATE broker_messages
    SET state = 'ready', lease_until = NULL, consumer = NULL,
        delivery_count = MAX(delivery_count - 1, 0)
    WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

const RENEW_HELD: &str = "UPDATE broker_messages SET lease_until = ?3
    WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

/// Lapsed leases: back to ready in place; the next fetch counts a new delivery.
const RESTORE_EXPIRED: &str = "UPDATE broker_messages
    SET state = 'ready', lease_until = NULL, consumer = NULL
    WHERE state = 'held' AND lease_until < ?1";

const PURGE: &str =
    "DELETE FROM broker_messages WHERE queue = ?1 AND state IN ('ready', 'scheduled')";

/// Counts of one queue: `?1` queue, `?2` now. Each count is served by an index.
const QUEUE_STATS: &str = "SELECT
    (SELECT COUNT(*) FROM broker_messages WHERE state = 'ready' AND queue = ?1)
      + (SELECT COUNT(*) FROM broker_messages
         WHERE state = 'scheduled' AND queue = ?1 AND not_before <= ?2),
    (SELECT COUNT(*) FROM broker_messages
     WHERE state = 'scheduled' AND queue = ?1 AND not_before > ?2),
    (SELECT COUNT(*) FROM broker_messages WHERE state = 'held' AND queue = ?1),
    (SELECT COUNT(*) FROM broker_dead_letters WHERE queue = ?1)";

/// Every queue the broker knows: declared, or with messages or dead letters.
const KNOWN_QUEUES: &str = "SELECT queue FROM broker_bindings
    UNION SELECT queue FROM broker_messages WHERE state = 'ready'
    UNION SELECT queue FROM broker_messages WHERE state = 'scheduled'
    UNION SELECT queue FROM broker_messages WHERE state = 'held'
    UNION SELECT queue FROM broker_dead_letters
    ORDER BY 1";

const DEAD_LETTERS_ALL: &str = "SELECT id, queue, reason, dead_at, payload
    FROM broker_dead_letters ORDER BY id DESC LIMIT ?1";

const DEAD_LETTERS_OF_QUEUE: &str = "SELECT id, queue, reason, dead_at, payload
    FROM broker_dead_letters WHERE queue = ?1 ORDER BY id DESC LIMIT ?2";

const DECLARE_BINDING: &str = "INSERT INTO broker_bindings
    (queue, exchange, exchange_kind, routing_key, declared_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (queue, exchange, routing_key) DO UPDATE SET exchange_kind = excluded.exchange_kind";

// ---- operations -------------------------------------------------------------------

/// Stores a batch in one transaction. Messages due later are stored as `scheduled`.
pub(super) fn publish(
    conn: &mut Connection,
    messages: &[NewMessage],
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_messages(&tx, messages, now)?;
    tx.commit()
}

/// A publish-once marker: the key and when it lapses (Unix ms).
pub(super) struct OnceMarker {
    pub key: String,
    pub expires_at: i64,
}

/// Stores a batch unless `marker.key` is recorded and not lapsed; records it in the
/// same transaction. Lapsed markers are deleted on the way. Returns whether the
/// batch was stored.
pub(super) fn publish_once(
    conn: &mut Connection,
    marker: &OnceMarker,
    messages: &[NewMessage],
    now: i64,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("DELETE FROM broker_published WHERE expires_at <= ?1")?
        .execute([now])?;
    let fresh = tx
        .prepare_cached(
            "INSERT INTO broker_published (key, expires_at) VALUES (?1, ?2)
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![marker.key, marker.expires_at])?;
    if fresh == 0 {
        return Ok(false);
    }
    insert_messages(&tx, messages, now)?;
    tx.commit()?;
    Ok(true)
}

fn insert_messages(
    tx: &rusqlite::Transaction<'_>,
    messages: &[NewMessage],
    now: i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
    for message in messages {
        let state = if message.not_before > now {
            "scheduled"
        } else {
            "ready"
        };
        insert.execute(params![
            message.queue,
            message.priority,
            state,
            message.not_before,
            now,
            message.payload,
        ])?;
    }
    Ok(())
}

/// Inserts raw bytes as a ready message (tests and tools; bypasses the envelope codec).
pub(super) fn insert_raw(
    conn: &mut Connection,
    queue: &str,
    payload: &[u8],
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(INSERT_MESSAGE)?
        .execute(params![queue, 0, "ready", 0, now, payload])?;
    tx.commit()
}

/// Claims up to `max` due messages from the queues in the given order. A payload that
/// does not decode is moved to the dead letters (with the decode error as reason) in
/// the same transaction and not returned.
pub(super) fn claim(conn: &mut Connection, p: &ClaimParams<'_>) -> rusqlite::Result<Claimed> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deliveries = Vec::new();
    {
        let mut promote = tx.prepare_cached(PROMOTE_DUE)?;
        let mut select = tx.prepare_cached(SELECT_READY)?;
        let mut claim = tx.prepare_cached(CLAIM)?;
        let mut to_dead = tx.prepare_cached(COPY_TO_DEAD_LETTERS)?;
        let mut delete = tx.prepare_cached(DELETE_BY_ID)?;
        for queue in p.queues {
            if deliveries.len() >= p.max {
                break;
            }
            promote.execute(params![queue, p.now])?;
            // Loop because dead-lettered rows leave holes in a batch; each pass claims
            // or removes every row it read, so the next pass reads new rows.
            loop {
                let wanted = p.max - deliveries.len();
                let rows: Vec<(i64, Vec<u8>, i64, i64)> = select
                    .query_map(
                        params![queue, p.now, i64::try_from(wanted).unwrap_or(i64::MAX)],
                        |row| {
                            Ok((
                                row.get(0)?,
                                payload_bytes(row.get_ref(1)?),
                                row.get(2)?,
                                row.get(3)?,
                            ))
                        },
                    )?
                    .collect::<Result<_, _>>()?;
                let read = rows.len();
                for (id, payload, delivery_count, token) in rows {
                    match Envelope::from_kombu_json(&payload) {
                        Ok(envelope) => {
                            claim.execute(params![id, p.lease_until, p.consumer])?;
                            let tag = Tag {
                                id,
                                token: token + 1,
                            };
                            deliveries.push(Delivery {
                                tag: tag.to_delivery_tag(),
                                queue: queue.clone(),
                                envelope,
                                delivery_count: u32::try_from(delivery_count + 1)
                                    .unwrap_or(u32::MAX),
                            });
                        }
                        Err(error) => {
                            let reason = format!("payload cannot be decoded: {error}");
                            tracing::warn!(queue = %queue, message_id = id, %reason, "dead-lettering message");
                            to_dead.execute(params![id, reason, p.now])?;
                            delete.execute(params![id])?;
                        }
                    }
                }
                if read < wanted || deliveries.len() >= p.max {
                    break;
                }
            }
        }
    }
    let next_due = if deliveries.is_empty() {
        let mut next = tx.prepare_cached(NEXT_DUE)?;
        let mut earliest: Option<i64> = None;
        for queue in p.queues {
            let due: Option<i64> = next.query_row([queue], |row| row.get(0))?;
            earliest = match (earliest, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        earliest
    } else {
        None
    };
    tx.commit()?;
    Ok(Claimed {
        deliveries,
        next_due,
    })
}

/// Deletes held deliveries named by current tags; returns how many.
pub(super) fn ack(conn: &mut Connection, tags: &[Tag]) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut removed = 0;
    {
        let mut delete = tx.prepare_cached(DELETE_HELD)?;
        for tag in tags {
            removed += delete.execute(params![tag.id, tag.token])? as u64;
        }
    }
    tx.commit()?;
    Ok(removed)
}

/// What [`reject`] does with the message.
pub(super) enum Rejection<'a> {
    Requeue,
    Release,
    DeadLetter { reason: &'a str },
}

/// Rejects one held delivery; returns whether the tag was current.
pub(super) fn reject(
    conn: &mut Connection,
    tag: Tag,
    action: Rejection<'_>,
    now: i64,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let done = match action {
        Rejection::Requeue => {
            let copied = tx
                .prepare_cached(REQUEUE_HELD)?
                .execute(params![tag.id, tag.token])?;
            if copied == 1 {
                tx.prepare_cached(DELETE_BY_ID)?.execute(params![tag.id])?;
            }
            copied == 1
        }
        Rejection::Release => {
            tx.prepare_cached(RELEASE_HELD)?
                .execute(params![tag.id, tag.token])?
                == 1
        }
        Rejection::DeadLetter { reason } => {
            let copied = tx
                .prepare_cached(HELD_TO_DEAD_LETTERS)?
                .execute(params![tag.id, tag.token, reason, now])?;
            if copied == 1 {
                tx.prepare_cached(DELETE_BY_ID)?.execute(params![tag.id])?;
            }
            copied == 1
        }
    };
    tx.commit()?;
    Ok(done)
}

/// Sets the lease end of held deliveries named by current tags; returns how many.
pub(super) fn renew(
    conn: &mut Connection,
    tags: &[Tag],
    lease_until: i64,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut renewed = 0;
    {
        let mut renew = tx.prepare_cached(RENEW_HELD)?;
        for tag in tags {
            renewed += renew.execute(params![tag.id, tag.token, lease_until])? as u64;
        }
    }
    tx.commit()?;
    Ok(renewed)
}

/// Puts held messages whose lease lapsed back to ready; returns how many.
pub(super) fn restore_expired(conn: &mut Connection, now: i64) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let restored = tx.prepare_cached(RESTORE_EXPIRED)?.execute([now])? as u64;
    tx.commit()?;
    Ok(restored)
}

/// Deletes the ready and scheduled messages of a queue; returns how many.
pub(super) fn purge(conn: &mut Connection, queue: &str) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let purged = tx.prepare_cached(PURGE)?.execute([queue])? as u64;
    tx.commit()?;
    Ok(purged)
}

/// Records a queue's binding.
pub(super) fn declare(
    conn: &mut Connection,
    queue: &str,
    exchange: &str,
    kind: &str,
    routing_key: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(DECLARE_BINDING)?.execute(params![
        queue,
        exchange,
        kind,
        routing_key,
        now
    ])?;
    tx.commit()
}

/// Counts per queue (every known queue when `queues` is empty), in one read
/// transaction so the numbers are consistent with each other.
pub(super) fn queue_stats(
    conn: &mut Connection,
    queues: &[String],
    now: i64,
) -> rusqlite::Result<Vec<QueueStats>> {
    let tx = conn.transaction()?;
    let names: Vec<String> = if queues.is_empty() {
        let mut stmt = tx.prepare_cached(KNOWN_QUEUES)?;
        let names = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        names
    } else {
        queues.to_vec()
    };
    let mut out = Vec::with_capacity(names.len());
    {
        let mut stmt = tx.prepare_cached(QUEUE_STATS)?;
        for name in names {
            let (ready, scheduled, held, dead_letters): (i64, i64, i64, i64) = stmt
                .query_row(params![name, now], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?;
            out.push(QueueStats {
                name,
                ready: count(ready),
                scheduled: count(scheduled),
                held: count(held),
                dead_letters: count(dead_letters),
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Dead letters, newest first.
pub(super) fn dead_letters(
    conn: &Connection,
    query: &DeadLetterQuery,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let limit = if query.limit == 0 { 100 } else { query.limit } as i64;
    let map = |row: &rusqlite::Row<'_>| -> rusqlite::Result<DeadLetter> {
        let id: i64 = row.get(0)?;
        let at: i64 = row.get(3)?;
        Ok(DeadLetter {
            id: id.to_string(),
            queue: row.get(1)?,
            reason: row.get(2)?,
            at: DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default(),
            payload: payload_bytes(row.get_ref(4)?),
        })
    };
    match &query.queue {
        Some(queue) => conn
            .prepare_cached(DEAD_LETTERS_OF_QUEUE)?
            .query_map(params![queue, limit], map)?
            .collect(),
        None => conn
            .prepare_cached(DEAD_LETTERS_ALL)?
            .query_map([limit], map)?
            .collect(),
    }
}

/// `PRAGMA data_version`: changes whenever another connection commits to the file.
pub(super) fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// The current journal mode (`wal` once opened).
#[cfg(test)]
pub(super) fn journal_mode(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))
}

/// The stored payload as bytes, whatever type a writer gave it: a row written by
/// another tool must be dead-lettered, not fail every fetch of its queue.
fn payload_bytes(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

const UPSERT_WORKER: &str = "INSERT INTO broker_workers (hostname, info, last_heartbeat, online)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (hostname) DO UPDATE SET info = excluded.info,
        last_heartbeat = excluded.last_heartbeat, online = excluded.online";

const SELECT_WORKERS: &str =
    "SELECT hostname, info FROM broker_workers ORDER BY last_heartbeat DESC";

/// Records a worker heartbeat.
pub(super) fn upsert_worker(
    conn: &mut Connection,
    hostname: &str,
    info: &str,
    at_ms: i64,
    online: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached(UPSERT_WORKER)?
        .execute(rusqlite::params![hostname, info, at_ms, online])?;
    Ok(())
}

/// Every worker row as `(hostname, info JSON)`, latest heartbeat first.
pub(super) fn workers(conn: &mut Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut statement = conn.prepare_cached(SELECT_WORKERS)?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}
