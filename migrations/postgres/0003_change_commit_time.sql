-- When each change committed (nanoseconds since the epoch), for the CloudEvent's `time`. New rows get the
-- database server's clock (statement_timestamp() of the insert, taken while the writing transaction holds the
-- revision counter's lock), so replicas on machines with skewed clocks still agree.
--
-- Rows written before this migration never recorded a commit time: they fall back to the user's created time,
-- exact for a creation and the best bound known for an update or delete.
ALTER TABLE user_changes ADD COLUMN committed_at_ns BIGINT NOT NULL DEFAULT 0;
UPDATE user_changes SET committed_at_ns = created_at_ns;
ALTER TABLE user_changes ALTER COLUMN committed_at_ns DROP DEFAULT;
