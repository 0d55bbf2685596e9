-- celeriac SQLite broker, schema version 4: publish-once markers.
--
-- `Broker::publish_once` inserts its key here in the same transaction as the
-- messages, so a re-send under the same key (beat taking over a run its dead replica
-- may have sent) is dropped. A marker is deleted once its window ends.
CREATE TABLE broker_published (
    key          TEXT    PRIMARY KEY,
    expires_at   INTEGER NOT NULL    -- Unix milliseconds
) WITHOUT ROWID;
CREATE INDEX broker_published_by_expiry ON broker_published (expires_at);
