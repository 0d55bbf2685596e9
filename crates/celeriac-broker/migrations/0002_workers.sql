-- celeriac SQLite broker, schema version 2: worker liveness.
--
-- Every running worker upserts its row every `freq` seconds (worker_heartbeat) and
-- marks it offline on a clean shutdown. A worker whose last heartbeat is older than
-- 2 × freq is considered gone (as Celery's monitors do). `info` is the WorkerInfo JSON.
CREATE TABLE broker_workers (
    hostname       TEXT    PRIMARY KEY,
    info           TEXT    NOT NULL,
    last_heartbeat INTEGER NOT NULL,   -- Unix milliseconds
    online         INTEGER NOT NULL    -- 1 running, 0 shut down cleanly
);
CREATE INDEX broker_workers_by_heartbeat ON broker_workers (last_heartbeat);
