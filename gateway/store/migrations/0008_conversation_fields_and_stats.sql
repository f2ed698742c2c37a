-- Conversation fields a help desk sets (issue 23) and the support metrics' aggregates.
--
-- assignee: the agent object as JSON (null: nobody); assignee_id its id, for the filter's
-- index. Tags also go into conversation_tags, one row per tag, for the tag filter (the JSON
-- column stays what the API serves). The updated-since filter needs no column: every
-- change of a conversation is an event naming it (gateway/store/queries.py).
ALTER TABLE conversations ADD COLUMN assignee TEXT;
ALTER TABLE conversations ADD COLUMN assignee_id TEXT;

CREATE TABLE conversation_tags (
    tag             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (tag, conversation_id)
) WITHOUT ROWID;
CREATE INDEX conversation_tags_by_conversation ON conversation_tags(conversation_id);
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

-- The metrics (docs/stats.md): written in the transaction of the event they come from
-- (gateway/store/jobs/stats.py), rebuilt from the events by `omnirelay report --rebuild`.
-- Rows per channel, account, agent ('' = no agent) and quarter hour (bucket = unix
-- seconds // 900: every time zone's days are whole buckets), in that order: a period of
-- one channel, account and agent is one range of the key, summed without sorting.
-- Counters and durations are apart, so that summing counters reads narrow rows.
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
    csat_sent     INTEGER NOT NULL DEFAULT 0,
    csat_answers  INTEGER NOT NULL DEFAULT 0,
    csat_sum      INTEGER NOT NULL DEFAULT 0,
    csat_good     INTEGER NOT NULL DEFAULT 0,  -- ratings of 4 or 5
    PRIMARY KEY (channel, account, agent, bucket)
) WITHOUT ROWID;

-- The durations that ended in a quarter hour, float64 seconds appended to a blob: medians
-- and p90s stay exact.
CREATE TABLE stat_durations (
    bucket     INTEGER NOT NULL,
    channel    TEXT NOT NULL,
    account    TEXT NOT NULL,
    agent      TEXT NOT NULL,
    frt        BLOB NOT NULL DEFAULT X'',
    response   BLOB NOT NULL DEFAULT X'',
    resolution BLOB NOT NULL DEFAULT X'',
    PRIMARY KEY (channel, account, agent, bucket)
) WITHOUT ROWID;

-- Open conversations: +1 at an open or reopen, -1 at a close, by assignee ('' = none), per
-- quarter hour and summed per day (day = bucket // 96, UTC): what is open at a time is the
-- whole days before it plus the quarter hours of its own day.
CREATE TABLE stat_open (
    bucket  INTEGER NOT NULL,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    agent   TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (bucket, channel, account, agent)
) WITHOUT ROWID;
CREATE TABLE stat_open_days (
    day     INTEGER NOT NULL,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    agent   TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (day, channel, account, agent)
) WITHOUT ROWID;

-- Customers who wrote (contact rate), a row per quarter hour, account and customer (a
-- 64-bit hash of the customer's id). Each row names the customer's write before it (any
-- account, same channel, same account): the distinct customers of a period are the rows in
-- it whose earlier write is before the period, a count over a range, no DISTINCT.
CREATE TABLE stat_writers (
    bucket       INTEGER NOT NULL,
    channel      TEXT NOT NULL,
    account      TEXT NOT NULL,
    customer     INTEGER NOT NULL,
    prev_any     INTEGER,
    prev_channel INTEGER,
    prev_account INTEGER,
    PRIMARY KEY (bucket, channel, account, customer)
) WITHOUT ROWID;
CREATE INDEX stat_writers_by_customer ON stat_writers(customer, channel, account, bucket);

-- What the metrics remember of each conversation (first customer message, the pending
-- customer run, human replies, what its last close counted), as JSON.
CREATE TABLE stat_conversations (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
