-- celeriac SQLite broker, schema version 1 (component 'broker' in celeriac_schema).
--
-- Applied once, inside a BEGIN IMMEDIATE transaction, by SqliteBroker::open. The result
-- backend may live in the same file with its own tables and its own rows in
-- celeriac_schema (component 'backend'); nothing here touches them.

-- One row per stored message, from publish until ack (or dead-lettering).
--
-- state:
--   'ready'     deliverable now (not_before <= now);
--   'scheduled' waiting for its ETA (not_before > now at publish); a fetch promotes it
--               to 'ready' once due, keeping its id (and so its place in the queue);
--   'held'      handed to `consumer` under a lease that ends at `lease_until`.
-- Order of delivery: priority DESC (higher first), then id (publish order). AUTOINCREMENT
-- keeps ids from ever being reused, so a delivery tag "{id}.{lease_token}" names exactly
-- one delivery of one message forever.
CREATE TABLE broker_messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    state          TEXT    NOT NULL CHECK (state IN ('ready', 'scheduled', 'held')),
    -- Unix milliseconds: not delivered before this time (the ETA; 0 = now).
    not_before     INTEGER NOT NULL DEFAULT 0,
    -- Unix milliseconds: the lease of a held message lapses at this time.
    lease_until    INTEGER,
    -- The consumer holding the message (FetchParams::consumer).
    consumer       TEXT,
    -- Deliveries reported to consumers, this one included.
    delivery_count INTEGER NOT NULL DEFAULT 0,
    -- Incremented on every fetch and never decreased: the second half of a delivery tag.
    lease_token    INTEGER NOT NULL DEFAULT 0,
    -- Unix milliseconds of the original publish (kept across requeues).
    published_at   INTEGER NOT NULL,
    -- kombu's JSON envelope (Envelope::to_kombu_json), or whatever bytes arrived.
    payload        BLOB    NOT NULL
);

-- The fetch path: WHERE state = 'ready' AND queue = ? ORDER BY priority DESC, id.
CREATE INDEX broker_messages_ready
    ON broker_messages (queue, priority DESC, id) WHERE state = 'ready';
-- Promotion of due ETA messages and the next wake-up time, per queue.
CREATE INDEX broker_messages_scheduled
    ON broker_messages (queue, not_before) WHERE state = 'scheduled';
-- restore_expired: held rows whose lease lapsed.
CREATE INDEX broker_messages_held
    ON broker_messages (lease_until) WHERE state = 'held';

-- Messages that could not be used: rejected with RejectAction::DeadLetter, or a payload
-- that does not decode. Kept with the reason until an operator deals with them.
CREATE TABLE broker_dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    -- Unix milliseconds.
    dead_at        INTEGER NOT NULL,
    -- broker_messages.id it had, for correlating logs.
    message_id     INTEGER,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    published_at   INTEGER,
    payload        BLOB    NOT NULL
);
CREATE INDEX broker_dead_letters_queue ON broker_dead_letters (queue, id);

-- Declared queues and their bindings (Broker::declare_queue), so tools can list queues
-- that are empty.
CREATE TABLE broker_bindings (
    queue         TEXT    NOT NULL,
    exchange      TEXT    NOT NULL,
    exchange_kind TEXT    NOT NULL,
    routing_key   TEXT    NOT NULL,
    -- Unix milliseconds of the first declaration.
    declared_at   INTEGER NOT NULL,
    PRIMARY KEY (queue, exchange, routing_key)
) WITHOUT ROWID;
