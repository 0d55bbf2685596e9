//! The broker's SQL, run on a blocking connection. Every write is one
//! `BEGIN IMMEDIATE` transaction: the write lock is taken before anything is read, so
//! no other connection (in this process or another) can claim the same rows between
//! our read and our update.

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::{DeadLetter, DeadLetterQuery, DeliveryTag, QueueStats};

/// A message ready to insert: the payload is serialized before the lock is taken.
pub(super) struct NewMessage {
    pub queue: String,
    pub priority: i64,
    /// Unix milliseconds (0 = deliverable now).
    pub not_before: i64,
    pub payload: Vec<u8>,
}

/// One row a fetch claimed, its payload not yet decoded (that happens after the
/// transaction, off the connection's thread).
pub(super) struct ClaimedRow {
    /// Index of its queue in [`ClaimParams::queues`].
    pub queue: usize,
    /// The tag of this delivery (the lease token already counts it).
    pub tag: Tag,
    /// Deliveries counted so far, this one included.
    pub delivery_count: i64,
    pub payload: Vec<u8>,
}

/// What a fetch claimed, and when the next ETA message of its queues becomes due.
pub(super) struct Claimed {
    /// In delivery order: queue by queue, each by priority (higher first), then id.
    pub rows: Vec<ClaimedRow>,
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

/// Rows per multi-row `INSERT` of a publish: one statement step stores this many.
const INSERT_CHUNK: usize = 64;
/// Parameters per row of [`INSERT_ONE`] and [`insert_many_sql`].
const INSERT_PARAMS: usize = 4;
/// The values of one published row, its parameters starting at `?{n}`: queue,
/// priority, not_before, payload; `?1` is now (the publish time, and what decides
/// between `ready` and `scheduled`).
fn insert_values(n: usize) -> String {
    format!(
        "(?{q}, ?{p}, CASE WHEN ?{nb} > ?1 THEN 'scheduled' ELSE 'ready' END, ?{nb}, ?1, ?{pl})",
        q = n,
        p = n + 1,
        nb = n + 2,
        pl = n + 3
    )
}
const INSERT_INTO: &str = "INSERT OR FAIL INTO broker_messages
    (queue, priority, state, not_before, published_at, payload) VALUES ";
/// One published row (`?1` now, then [`insert_values`]).
const INSERT_ONE: &str = "INSERT INTO broker_messages
    (queue, priority, state, not_before, published_at, payload)
    VALUES (?2, ?3, CASE WHEN ?4 > ?1 THEN 'scheduled' ELSE 'ready' END, ?4, ?1, ?5)";

/// [`INSERT_CHUNK`] published rows in one statement.
fn insert_many_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let values: Vec<String> = (0..INSERT_CHUNK)
            .map(|i| insert_values(2 + i * INSERT_PARAMS))
            .collect();
        format!("{INSERT_INTO}{}", values.join(", "))
    })
}

/// Due ETA messages of one queue become ready, keeping their id (their place).
const PROMOTE_DUE: &str = "UPDATE broker_messages SET state = 'ready'
    WHERE state = 'scheduled' AND queue = ?1 AND not_before <= ?2";

/// The fetch path: claims the first `?2` ready rows of queue `?1` in one statement
/// (`?3` lease end, `?4` consumer). The rows are picked from the partial index
/// `broker_messages_ready` alone (it holds every column the subquery reads), without
/// a sort. Ready rows are due by construction (a message is stored `ready` only when
/// its ETA has passed, and a `scheduled` one becomes `ready` only once due), so
/// `not_before` is not read. `RETURNING` gives rows in no particular order; the
/// caller sorts them.
///
/// `OR FAIL` (here and in the other statements that write many rows): no constraint
/// can fail on these rows, and without `ABORT`'s statement rollback SQLite keeps no
/// statement journal (it copied every page the statement touched, and spilled to a
/// temporary file past 64 KiB).
pub(super) const CLAIM_READY: &str = "UPDATE OR FAIL broker_messages
    SET state = 'held', lease_until = ?3, consumer = ?4,
        delivery_count = delivery_count + 1, lease_token = lease_token + 1
    WHERE id IN (SELECT id FROM broker_messages
                 WHERE state = 'ready' AND queue = ?1
                 ORDER BY priority DESC, id
                 LIMIT ?2)
    RETURNING id, priority, lease_token, delivery_count, payload";

const NEXT_DUE: &str = "SELECT MIN(not_before) FROM broker_messages
    WHERE state = 'scheduled' AND queue = ?1";

/// Copies a claimed delivery whose payload does not decode to the dead letters, not
/// counting that claim as a delivery; `?1` id, `?2` token, `?3` reason, `?4` now.
const UNDECODABLE_TO_DEAD_LETTERS: &str = "INSERT INTO broker_dead_letters
    (queue, reason, dead_at, message_id, delivery_count, published_at, payload)
    SELECT queue, ?3, ?4, id, MAX(delivery_count - 1, 0), published_at, payload
    FROM broker_messages WHERE id = ?1 AND lease_token = ?2 AND state = 'held'";

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

/// Ack: deletes the held deliveries named by `?1`, a JSON array of `[id, token]`
/// pairs ([`tags_json`]); one statement for a batch, each row found by its id.
pub(super) const ACK_HELD: &str = "DELETE FROM broker_messages
    WHERE state = 'held'
      AND (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))";

/// Renew: `?2` is the new lease end of the held deliveries named by `?1` (as in
/// [`ACK_HELD`]).
pub(super) const RENEW_HELD: &str = "UPDATE OR FAIL broker_messages SET lease_until = ?2
    WHERE state = 'held'
      AND (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))";

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
    let mut chunks = messages.chunks_exact(INSERT_CHUNK);
    if chunks.len() > 0 {
        let mut insert = tx.prepare_cached(insert_many_sql())?;
        for chunk in &mut chunks {
            insert.raw_bind_parameter(1, now)?;
            for (i, message) in chunk.iter().enumerate() {
                bind_message(&mut insert, 2 + i * INSERT_PARAMS, message)?;
            }
            insert.raw_execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut insert = tx.prepare_cached(INSERT_ONE)?;
        for message in rest {
            insert.raw_bind_parameter(1, now)?;
            bind_message(&mut insert, 2, message)?;
            insert.raw_execute()?;
        }
    }
    Ok(())
}

/// Binds one message's parameters, the first at index `first`.
fn bind_message(
    insert: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    message: &NewMessage,
) -> rusqlite::Result<()> {
    insert.raw_bind_parameter(first, message.queue.as_str())?;
    insert.raw_bind_parameter(first + 1, message.priority)?;
    insert.raw_bind_parameter(first + 2, message.not_before)?;
    insert.raw_bind_parameter(first + 3, message.payload.as_slice())?;
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

/// Claims up to `max` due messages from the queues in the given order, one
/// `UPDATE … RETURNING` per queue. The payloads are returned undecoded: the caller
/// decodes them after the transaction and hands the ones that do not decode to
/// [`dead_letter_undecodable`].
pub(super) fn claim(conn: &mut Connection, p: &ClaimParams<'_>) -> rusqlite::Result<Claimed> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rows: Vec<ClaimedRow> = Vec::with_capacity(p.max.min(1024));
    // (priority, row) of one queue, sorted before they join `rows`.
    let mut of_queue: Vec<(i64, ClaimedRow)> = Vec::new();
    {
        let mut promote = tx.prepare_cached(PROMOTE_DUE)?;
        let mut claim = tx.prepare_cached(CLAIM_READY)?;
        for (index, queue) in p.queues.iter().enumerate() {
            if rows.len() >= p.max {
                break;
            }
            promote.execute(params![queue, p.now])?;
            let wanted = i64::try_from(p.max - rows.len()).unwrap_or(i64::MAX);
            let mut returned = claim.query(params![queue, wanted, p.lease_until, p.consumer])?;
            while let Some(row) = returned.next()? {
                let id: i64 = row.get(0)?;
                let priority: i64 = row.get(1)?;
                of_queue.push((
                    priority,
                    ClaimedRow {
                        queue: index,
                        tag: Tag {
                            id,
                            token: row.get(2)?,
                        },
                        delivery_count: row.get(3)?,
                        payload: payload_bytes(row.get_ref(4)?),
                    },
                ));
            }
            drop(returned);
            // RETURNING has no order: restore the queue's (priority DESC, id).
            of_queue.sort_unstable_by(|(pa, a), (pb, b)| pb.cmp(pa).then(a.tag.id.cmp(&b.tag.id)));
            rows.extend(of_queue.drain(..).map(|(_, row)| row));
        }
    }
    let next_due = if rows.is_empty() {
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
    Ok(Claimed { rows, next_due })
}

/// Moves claimed deliveries whose payload does not decode to the dead letters, each
/// with its reason; the claim is not counted as a delivery. A tag that is no longer
/// current (the lease lapsed meanwhile) is skipped. Returns how many were moved.
pub(super) fn dead_letter_undecodable(
    conn: &mut Connection,
    undecodable: &[(Tag, String)],
    now: i64,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut moved = 0;
    {
        let mut copy = tx.prepare_cached(UNDECODABLE_TO_DEAD_LETTERS)?;
        let mut delete = tx.prepare_cached(DELETE_HELD)?;
        for (tag, reason) in undecodable {
            if copy.execute(params![tag.id, tag.token, reason, now])? == 1 {
                delete.execute(params![tag.id, tag.token])?;
                moved += 1;
            }
        }
    }
    tx.commit()?;
    Ok(moved)
}

/// Tags as the JSON array [`ACK_HELD`] and [`RENEW_HELD`] read: `[[id,token],…]`.
fn tags_json(tags: &[Tag]) -> String {
    use std::fmt::Write;
    let mut json = String::with_capacity(2 + tags.len() * 24);
    json.push('[');
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(json, "[{},{}]", tag.id, tag.token);
    }
    json.push(']');
    json
}

/// Deletes held deliveries named by current tags, in one statement; returns how many.
pub(super) fn ack(conn: &mut Connection, tags: &[Tag]) -> rusqlite::Result<u64> {
    let json = tags_json(tags);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let removed = tx.prepare_cached(ACK_HELD)?.execute([json])? as u64;
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

/// Sets the lease end of held deliveries named by current tags, in one statement;
/// returns how many.
pub(super) fn renew(
    conn: &mut Connection,
    tags: &[Tag],
    lease_until: i64,
) -> rusqlite::Result<u64> {
    let json = tags_json(tags);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let renewed = tx
        .prepare_cached(RENEW_HELD)?
        .execute(params![json, lease_until])? as u64;
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

/// A passive checkpoint: copies what it can of the WAL into the database file
/// without waiting for readers or writers.
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
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
