-- How far the NATS outbox relay has published the change log. It is advanced only after JetStream
-- acknowledged a change, and only ever forwards; while a relay is configured, the change log is never pruned
-- beyond it, so an unpublished change cannot be lost to the log's window.
CREATE TABLE relay_mark (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    published BIGINT  NOT NULL CHECK (published >= 0)
);
INSERT INTO relay_mark (published) VALUES (0);
