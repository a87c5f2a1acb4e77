-- Users and their change log.
--
-- AUTOINCREMENT on both keys: ids and revisions are never reused, even after deletes and log pruning.
-- name_folded / email_folded hold the case-folded values (computed by the service, identically for every
-- store), so case-insensitive uniqueness and filtering are plain comparisons.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    name_folded   TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    email_folded  TEXT    NOT NULL UNIQUE,
    roles         TEXT    NOT NULL DEFAULT '[]', -- JSON array of strings
    status        INTEGER NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at_ns INTEGER NOT NULL
);

CREATE TABLE user_changes (
    revision      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          INTEGER NOT NULL, -- user.UserEventType number: CREATED, UPDATED or DELETED
    user_id       INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    roles         TEXT    NOT NULL,
    status        INTEGER NOT NULL,
    created_at_ns INTEGER NOT NULL,
    -- The values before an update (NULL otherwise).
    prev_name     TEXT,
    prev_email    TEXT,
    prev_roles    TEXT,
    prev_status   INTEGER
);
