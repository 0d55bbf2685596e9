-- celeriac SQLite lock store, schema version 1 (component 'lock' in celeriac_schema).
--
-- Applied once, inside a BEGIN IMMEDIATE transaction, by SqliteLockManager::open. The
-- file is normally the broker's; the broker and the result backend keep their own
-- tables (broker_*, backend_*) and their own rows in celeriac_schema.

-- One row per lock that was acquired and not yet released. A row whose expires_at has
-- passed is a lapsed lock: it counts as free everywhere and is deleted by the next
-- acquisition (of any key). Times are Unix milliseconds.
--
-- Key names (documented in celeriac_lock::keys):
--   single:<task>[:<arg>=<json>,...]   single-instance runs, held by a worker
--   unique:<key>                       unique enqueue, held from send to final outcome
CREATE TABLE lock_locks (
    key         TEXT    PRIMARY KEY,
    -- The owner token: renew and release must present it.
    token       TEXT    NOT NULL,
    -- Who holds it, for people (hostname, pid, task id); never compared.
    owner       TEXT    NOT NULL,
    -- This holder's fencing number (from lock_fencing).
    fencing     INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Deleting lapsed locks.
CREATE INDEX lock_locks_expiry ON lock_locks (expires_at);

-- The last fencing number issued, for every key at once: each acquisition takes the
-- next one, so a key's numbers grow across releases, expiries and forced releases,
-- and rows of released locks need not be kept to remember them.
CREATE TABLE lock_fencing (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO lock_fencing (id, last) VALUES (1, 0);
