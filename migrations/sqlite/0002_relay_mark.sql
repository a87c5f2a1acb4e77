-- How far the NATS outbox relay has published the change log. It is advanced only after JetStream
-- acknowledged a change, and only ever forwards; while a relay is configured, the change log is never pruned
-- beyond it, so an unpublished change cannot be lost to the log's window.
CREATE TABLE relay_mark (
    only_row  INTEGER PRIMARY KEY CHECK (only_row = 1),
    published INTEGER NOT NULL CHECK (published >= 0)
);
INSERT INTO relay_mark (only_row, published) VALUES (1, 0);
