-- celeriac SQLite broker, schema version 3: broadcasts (events, remote control).
--
-- The equivalent of kombu's fanout over Redis PUB/SUB for one machine: a broadcast
-- is one row; each subscriber remembers the last id it saw and reads the newer rows
-- of its exchange. Ids only grow (AUTOINCREMENT) and rows become visible in id order
-- (SQLite has one writer at a time), so a subscriber never skips one. Rows are
-- fire-and-forget like PUB/SUB: publishers delete rows older than a minute.
CREATE TABLE broker_broadcasts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange     TEXT    NOT NULL,
    routing_key  TEXT    NOT NULL,
    payload      BLOB    NOT NULL,   -- kombu JSON envelope
    published_at INTEGER NOT NULL    -- Unix milliseconds
);
CREATE INDEX broker_broadcasts_by_exchange ON broker_broadcasts (exchange, id);
CREATE INDEX broker_broadcasts_by_time ON broker_broadcasts (published_at);
