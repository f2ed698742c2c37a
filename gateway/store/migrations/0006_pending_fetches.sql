-- Attachments given by URL, fetched after their message committed (gateway/fetcher.py).
-- A row is written in the message's own transaction and deleted in the transaction that
-- adds the fetched attachment (or records its failure), so a fetch is never lost and a
-- stored file is never fetched again. 0005 is another branch's migration.
CREATE TABLE pending_fetches (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL,
    source          TEXT NOT NULL,          -- the registered media source (gateway/media.py)
    url             TEXT NOT NULL,
    filename        TEXT,
    content_type    TEXT,
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending | inflight
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    created_at      REAL NOT NULL
);
CREATE INDEX pending_fetches_due ON pending_fetches(state, next_attempt_at);
CREATE INDEX pending_fetches_by_message ON pending_fetches(message_id);
