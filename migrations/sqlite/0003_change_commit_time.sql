-- When each change committed (nanoseconds since the epoch), for the CloudEvent's `time`. New rows get the
-- clock reading taken while the writing transaction holds the write lock, just before it commits.
--
-- Rows written before this migration never recorded a commit time: they fall back to the user's created time,
-- exact for a creation and the best bound known for an update or delete.
ALTER TABLE user_changes ADD COLUMN committed_at_ns INTEGER NOT NULL DEFAULT 0;
UPDATE user_changes SET committed_at_ns = created_at_ns;
