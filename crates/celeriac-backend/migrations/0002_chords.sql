-- celeriac result backend, schema version 2: chord bookkeeping (the SQLite
-- counterpart of Celery's K.s / K.j / K.d / K.c keys on Redis).
--
-- `backend_chords`: one row per chord group id. `size` is the number of header
-- tasks (NULL until the client set it); `claim` is the dispatch claim token, or
-- 'done' once the body was dispatched; `claim_expires_at` ends the claim (and the
-- done marker); `expires_at` ends the whole chord. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS backend_chords (
    group_id         TEXT    NOT NULL PRIMARY KEY,
    size             INTEGER,
    claim            TEXT,
    claim_expires_at INTEGER,
    expires_at       INTEGER
);

-- `backend_chord_parts`: each header result once per (task id, header index).
-- `position` orders the parts (the header index; NULL indexes sort last).
CREATE TABLE IF NOT EXISTS backend_chord_parts (
    group_id  TEXT    NOT NULL,
    member    TEXT    NOT NULL,
    position  INTEGER,
    task_id   TEXT    NOT NULL,
    state     TEXT    NOT NULL,
    result    TEXT    NOT NULL,
    PRIMARY KEY (group_id, member)
);
