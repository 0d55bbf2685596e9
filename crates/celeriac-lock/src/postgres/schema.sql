-- celeriac PostgreSQL lock store. Run by PostgresLockManager::open, inside one
-- transaction holding a transaction-level advisory lock, so processes starting
-- together do not race; every statement is idempotent (IF NOT EXISTS). {schema} is
-- replaced by the quoted schema and a dot ("locks_a".), or by nothing (the
-- connection's search_path).

-- One row per lock that was acquired and not yet released. A row whose expires_at
-- has passed (the server's clock) is a lapsed lock: free everywhere, replaced by the
-- next acquisition of its key or deleted by a later acquisition of any key.
--
-- Key names (celeriac_lock::keys):
--   single:<task>[:<arg>=<json>,...]   single-instance runs, held by a worker
--   unique:<key>                       unique enqueue, held from send to final outcome
CREATE TABLE IF NOT EXISTS {schema}celeriac_locks (
    key         text        PRIMARY KEY,
    -- The owner token: renew and release must present it.
    token       text        NOT NULL,
    -- Who holds it, for people (hostname, pid, task id); never compared.
    owner       text        NOT NULL,
    -- This holder's fencing number (from celeriac_lock_fencing).
    fencing     bigint      NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Deleting lapsed locks.
CREATE INDEX IF NOT EXISTS celeriac_locks_expiry ON {schema}celeriac_locks (expires_at);

-- Fencing numbers, for every key at once: each acquisition takes the next one, so a
-- key's numbers grow across releases, expiries and forced releases without keeping
-- a row per key ever locked.
CREATE SEQUENCE IF NOT EXISTS {schema}celeriac_lock_fencing AS bigint;
