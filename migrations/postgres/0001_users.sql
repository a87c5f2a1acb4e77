-- Users, their change log, and the revision counter.
--
-- The columns match migrations/sqlite so both stores decode rows the same way: roles are a JSON array kept as
-- text (filters cast it to jsonb), times are nanoseconds since the epoch. name_folded / email_folded hold the
-- case-folded values (computed by the service, identically for every store), so case-insensitive uniqueness
-- and filtering are plain comparisons.

-- An identity column draws from a sequence, which never hands out a value twice, even after deletes or
-- rolled-back inserts: ids are never reused.
CREATE TABLE users (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT    NOT NULL,
    name_folded   TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    email_folded  TEXT    NOT NULL UNIQUE,
    roles         TEXT    NOT NULL DEFAULT '[]',
    status        INTEGER NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at_ns BIGINT  NOT NULL
);

-- Revisions come from revision_counter, not from a sequence: a sequence value is taken when a statement runs,
-- so two writers can commit in the opposite order of their values, and a reader could see revision 8 and
-- later find 7 appear. The counter row is locked by every writing transaction until it commits, which
-- makes revision order commit order (see src/user_service/store/postgres.rs).
CREATE TABLE user_changes (
    revision      BIGINT  PRIMARY KEY,
    kind          INTEGER NOT NULL, -- user.UserEventType number: CREATED, UPDATED or DELETED
    user_id       BIGINT  NOT NULL,
    name          TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    roles         TEXT    NOT NULL,
    status        INTEGER NOT NULL,
    created_at_ns BIGINT  NOT NULL,
    -- The values before an update (NULL otherwise).
    prev_name     TEXT,
    prev_email    TEXT,
    prev_roles    TEXT,
    prev_status   INTEGER
);

-- Exactly one row: the latest committed revision. It only grows, so pruning the log never lets a revision
-- be handed out again.
CREATE TABLE revision_counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    revision BIGINT  NOT NULL CHECK (revision >= 0)
);
INSERT INTO revision_counter (revision) VALUES (0);
