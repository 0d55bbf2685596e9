-- celeriac SQLite schedule store, schema version 1 (component 'beat' in celeriac_schema).
--
-- Applied once, inside a BEGIN IMMEDIATE transaction, by SqliteScheduleStore::open.
-- The file is normally the broker's; the broker, the result backend and the lock
-- store keep their own tables (broker_*, backend_*, lock_*) and celeriac_schema rows.
--
-- Times are Unix nanoseconds (INTEGER), so due times compare exactly; read them with
-- datetime(due_at / 1e9, 'unixepoch').

-- One row per schedule entry (celeriac_beat::Entry).
CREATE TABLE beat_entries (
    name            TEXT    PRIMARY KEY,
    task            TEXT    NOT NULL,
    -- JSON array / object.
    args            TEXT    NOT NULL DEFAULT '[]',
    kwargs          TEXT    NOT NULL DEFAULT '{}',
    -- 'interval', 'crontab' or 'clocked' (for SQL readers), and the schedule as JSON
    -- ({"crontab": {"minute": "*/5", ..., "timezone": "Asia/Seoul"}}).
    schedule_kind   TEXT    NOT NULL,
    schedule        TEXT    NOT NULL,
    queue           TEXT,
    exchange        TEXT,
    routing_key     TEXT,
    priority        INTEGER,
    -- Per-run expiry in seconds: a run expires at due_at + expires_secs.
    expires_secs    REAL,
    headers         TEXT    NOT NULL DEFAULT '{}',
    enabled         INTEGER NOT NULL DEFAULT 1,
    one_off         INTEGER NOT NULL DEFAULT 0,
    start_time      INTEGER,
    end_time        INTEGER,
    catch_up        TEXT    NOT NULL DEFAULT 'once' CHECK (catch_up IN ('once', 'all', 'skip')),
    description     TEXT    NOT NULL DEFAULT '',
    -- Run state, advanced only by a claim.
    last_run_at     INTEGER,
    total_run_count INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per claimed run; (entry, due_at) is claimed once. sent_at stays NULL until
-- the claimer published it; a NULL sent_at with lease_until in the past is a run
-- whose beat died, which another beat takes over. The latest 100 runs of each entry
-- are kept.
CREATE TABLE beat_runs (
    entry       TEXT    NOT NULL,
    due_at      INTEGER NOT NULL,
    claimer     TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    sent_at     INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (entry, due_at)
) WITHOUT ROWID;

-- Finding stale runs.
CREATE INDEX beat_runs_unsent ON beat_runs (lease_until) WHERE sent_at IS NULL;

-- The change marker beat polls: a counter bumped by the triggers below on every
-- change of an entry's configuration, whoever makes it (celeriac, or plain SQL).
-- Claims change only last_run_at and total_run_count, which do not bump it.
CREATE TABLE beat_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    counter INTEGER NOT NULL
);
INSERT INTO beat_changes (id, counter) VALUES (1, 0);

CREATE TRIGGER beat_entries_inserted AFTER INSERT ON beat_entries
BEGIN
    UPDATE beat_changes SET counter = counter + 1 WHERE id = 1;
END;

CREATE TRIGGER beat_entries_deleted AFTER DELETE ON beat_entries
BEGIN
    UPDATE beat_changes SET counter = counter + 1 WHERE id = 1;
END;

CREATE TRIGGER beat_entries_updated AFTER UPDATE OF
    name, task, args, kwargs, schedule_kind, schedule, queue, exchange, routing_key,
    priority, expires_secs, headers, enabled, one_off, start_time, end_time, catch_up,
    description
ON beat_entries
BEGIN
    UPDATE beat_changes SET counter = counter + 1 WHERE id = 1;
END;
