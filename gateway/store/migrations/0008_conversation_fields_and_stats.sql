-- Conversation fields a help desk sets (issue 23) and the support metrics' aggregates.
--
-- assignee: the agent object as JSON (null: nobody); assignee_id its id, for the filter's
-- index. updated_at: when anything of the conversation last changed (a message, a status,
-- a field), kept by the triggers below whatever code changes the row, for the
-- updated-since filter. Tags also go into conversation_tags, one row per tag, for the tag
-- filter (the JSON column stays what the API serves).
ALTER TABLE conversations ADD COLUMN assignee TEXT;
ALTER TABLE conversations ADD COLUMN assignee_id TEXT;
ALTER TABLE conversations ADD COLUMN updated_at TEXT;
UPDATE conversations SET updated_at = CASE WHEN closed_at IS NOT NULL
    AND closed_at > last_message_at THEN closed_at ELSE last_message_at END;

CREATE TRIGGER conversations_updated_at_on_insert AFTER INSERT ON conversations
BEGIN
    UPDATE conversations SET updated_at = NEW.last_message_at WHERE id = NEW.id;
END;
CREATE TRIGGER conversations_updated_at_on_update AFTER UPDATE OF last_message_at, status,
    tags, priority, queue, assignee, context, group_name ON conversations
BEGIN
    UPDATE conversations SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE id = NEW.id;
END;

CREATE TABLE conversation_tags (
    tag             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (tag, conversation_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO conversation_tags (tag, conversation_id)
    SELECT j.value, c.id FROM conversations c, json_each(c.tags) j WHERE c.tags != '[]';
-- Kept by triggers, so a rule that tags a conversation at ingest needs no code of its own.
CREATE TRIGGER conversation_tags_on_insert AFTER INSERT ON conversations
WHEN NEW.tags != '[]'
BEGIN
    INSERT OR IGNORE INTO conversation_tags (tag, conversation_id)
        SELECT value, NEW.id FROM json_each(NEW.tags);
END;
CREATE TRIGGER conversation_tags_on_update AFTER UPDATE OF tags ON conversations
BEGIN
    DELETE FROM conversation_tags WHERE conversation_id = NEW.id;
    INSERT OR IGNORE INTO conversation_tags (tag, conversation_id)
        SELECT value, NEW.id FROM json_each(NEW.tags);
END;
CREATE TRIGGER conversation_tags_on_delete AFTER DELETE ON conversations
WHEN OLD.tags != '[]'
BEGIN
    DELETE FROM conversation_tags WHERE conversation_id = OLD.id;
END;

-- One index per filter of GET /v1/conversations, each ending in id (the cursor's order).
CREATE INDEX conversations_by_channel ON conversations(channel, id);
CREATE INDEX conversations_by_account ON conversations(account, id);
CREATE INDEX conversations_by_queue ON conversations(queue, id) WHERE queue IS NOT NULL;
CREATE INDEX conversations_by_assignee ON conversations(assignee_id, id)
    WHERE assignee_id IS NOT NULL;
CREATE INDEX conversations_by_updated ON conversations(updated_at, id);

-- The metrics (docs/stats.md): written in the transaction of the event they come from
-- (gateway/store/jobs/stats.py), rebuilt from the events by `omnirelay report --rebuild`.
-- A row per quarter hour (bucket = unix seconds // 900: every time zone's days are whole
-- buckets), channel, account and agent ('' = no agent): counters, and the durations that
-- ended in it as float64 seconds, so medians and p90s are exact.
CREATE TABLE stat_buckets (
    bucket        INTEGER NOT NULL,
    channel       TEXT NOT NULL,
    account       TEXT NOT NULL,
    agent         TEXT NOT NULL,
    created       INTEGER NOT NULL DEFAULT 0,  -- conversations opened
    closes        INTEGER NOT NULL DEFAULT 0,  -- every close, by the agent who closed
    resolved      INTEGER NOT NULL DEFAULT 0,  -- conversations whose last close is here
    with_reply    INTEGER NOT NULL DEFAULT 0,  -- ... with at least one human reply
    one_touch     INTEGER NOT NULL DEFAULT 0,  -- ... with exactly one
    resolved_msgs INTEGER NOT NULL DEFAULT 0,  -- their messages, both ways
    open_delta    INTEGER NOT NULL DEFAULT 0,  -- +1 opened/reopened, -1 closed (by assignee)
    csat_sent     INTEGER NOT NULL DEFAULT 0,
    csat_answers  INTEGER NOT NULL DEFAULT 0,
    csat_sum      INTEGER NOT NULL DEFAULT 0,
    csat_good     INTEGER NOT NULL DEFAULT 0,  -- ratings of 4 or 5
    frt           BLOB NOT NULL DEFAULT X'',
    response      BLOB NOT NULL DEFAULT X'',
    resolution    BLOB NOT NULL DEFAULT X'',
    PRIMARY KEY (bucket, channel, account, agent)
) WITHOUT ROWID;

-- Customers who wrote, per quarter hour and account (contact rate's distinct customers).
CREATE TABLE stat_writers (
    bucket      INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    account     TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    PRIMARY KEY (bucket, channel, account, customer_id)
) WITHOUT ROWID;

-- What the metrics remember of each conversation (first customer message, the pending
-- customer run, human replies, what its last close counted), as JSON.
CREATE TABLE stat_conversations (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
