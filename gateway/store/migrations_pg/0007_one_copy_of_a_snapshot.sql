-- Mirrors SQLite 0007: a message.received event names its message (message_ref, and where
-- its JSON goes in the body: message_at) instead of repeating it; before a message row
-- changes or goes, its old data is copied into the event (message_snapshot).
ALTER TABLE events ADD COLUMN message_ref TEXT COLLATE "C";
ALTER TABLE events ADD COLUMN message_at INTEGER;
ALTER TABLE events ADD COLUMN message_snapshot BYTEA;
ALTER TABLE messages ADD COLUMN event_seq BIGINT;

CREATE FUNCTION messages_keep_event_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE events SET message_snapshot = OLD.data
    WHERE seq = OLD.event_seq AND message_ref = OLD.id AND message_snapshot IS NULL;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER messages_keep_event_snapshot_on_update AFTER UPDATE OF data ON messages
FOR EACH ROW WHEN (OLD.event_seq IS NOT NULL)
EXECUTE FUNCTION messages_keep_event_snapshot();

CREATE TRIGGER messages_keep_event_snapshot_on_delete BEFORE DELETE ON messages
FOR EACH ROW WHEN (OLD.event_seq IS NOT NULL)
EXECUTE FUNCTION messages_keep_event_snapshot();

CREATE TABLE codec_dictionaries (
    id   INTEGER PRIMARY KEY,
    data BYTEA NOT NULL
);
