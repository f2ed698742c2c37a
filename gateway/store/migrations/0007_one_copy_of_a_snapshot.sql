-- Less disk per message (docs/benchmarks.md, "Disk per message").
--
-- A message.received event no longer repeats its message's JSON: the event row names the
-- message (message_ref) and where its JSON goes in the body (message_at); the message row
-- names that event (event_seq). Serving the event splices the message row's data in.
-- Before a message row changes or goes, its old data is copied into the event
-- (message_snapshot), by the triggers below, whatever code changes it: events stay the
-- snapshots they were. Erasure clears all three (the body becomes {"erased": true}).
ALTER TABLE events ADD COLUMN message_ref TEXT;
ALTER TABLE events ADD COLUMN message_at INTEGER;
ALTER TABLE events ADD COLUMN message_snapshot BLOB;
ALTER TABLE messages ADD COLUMN event_seq INTEGER;

CREATE TRIGGER messages_keep_event_snapshot_on_update AFTER UPDATE OF data ON messages
WHEN OLD.event_seq IS NOT NULL
BEGIN
    UPDATE events SET message_snapshot = OLD.data
    WHERE seq = OLD.event_seq AND message_ref = OLD.id AND message_snapshot IS NULL;
END;

CREATE TRIGGER messages_keep_event_snapshot_on_delete BEFORE DELETE ON messages
WHEN OLD.event_seq IS NOT NULL
BEGIN
    UPDATE events SET message_snapshot = OLD.data
    WHERE seq = OLD.event_seq AND message_ref = OLD.id AND message_snapshot IS NULL;
END;

-- The zstd dictionaries stored values are compressed with (gateway/store/compact.py);
-- the store adds the built-in one at open.
CREATE TABLE codec_dictionaries (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
