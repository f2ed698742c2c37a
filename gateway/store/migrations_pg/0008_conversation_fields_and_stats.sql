-- Mirrors SQLite 0008: the conversation fields a help desk sets (issue 23) and the support
-- metrics' aggregates (gateway/store/jobs/stats.py, docs/stats.md).
--
-- assignee: the agent object as JSON (null: nobody); assignee_id its id, for the filter's
-- index. Tags also go into conversation_tags, one row per tag, for the tag filter (the JSON
-- column stays what the API serves).
ALTER TABLE conversations ADD COLUMN assignee TEXT;
ALTER TABLE conversations ADD COLUMN assignee_id TEXT COLLATE "C";

CREATE TABLE conversation_tags (
    tag             TEXT COLLATE "C" NOT NULL,
    conversation_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (tag, conversation_id)
);
CREATE INDEX conversation_tags_by_conversation ON conversation_tags(conversation_id);
INSERT INTO conversation_tags (tag, conversation_id)
    SELECT j.value, c.id FROM conversations c, jsonb_array_elements_text(c.tags::jsonb) j
    WHERE c.tags != '[]' ON CONFLICT DO NOTHING;

-- Kept by triggers as on SQLite, so a rule that tags a conversation at ingest needs no
-- code of its own. An UPDATE that sets tags to the same list leaves the rows alone.
CREATE FUNCTION conversation_tags_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM conversation_tags WHERE conversation_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO conversation_tags (tag, conversation_id)
            SELECT value, NEW.id FROM jsonb_array_elements_text(NEW.tags::jsonb)
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER conversation_tags_on_insert AFTER INSERT ON conversations
FOR EACH ROW WHEN (NEW.tags <> '[]') EXECUTE FUNCTION conversation_tags_keep();
CREATE TRIGGER conversation_tags_on_update AFTER UPDATE OF tags ON conversations
FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags) EXECUTE FUNCTION conversation_tags_keep();
CREATE TRIGGER conversation_tags_on_delete AFTER DELETE ON conversations
FOR EACH ROW WHEN (OLD.tags <> '[]') EXECUTE FUNCTION conversation_tags_keep();

-- One index per filter of GET /v1/conversations, each ending in id (the cursor's order).
CREATE INDEX conversations_by_channel ON conversations(channel, id);
CREATE INDEX conversations_by_account ON conversations(account, id);
CREATE INDEX conversations_by_queue ON conversations(queue, id) WHERE queue IS NOT NULL;
CREATE INDEX conversations_by_assignee ON conversations(assignee_id, id)
    WHERE assignee_id IS NOT NULL;

-- The metrics, written in the transaction of the event they come from. Rows per quarter
-- hour (bucket = unix seconds // 900), channel, account and agent ('' = no agent).
-- Counters are INTEGER, so that their SUMs read as Python ints (bigint, not numeric).
CREATE TABLE stat_buckets (
    bucket        INTEGER NOT NULL,
    channel       TEXT COLLATE "C" NOT NULL,
    account       TEXT COLLATE "C" NOT NULL,
    agent         TEXT COLLATE "C" NOT NULL,
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
);

-- The durations that ended in a quarter hour, float64 seconds appended to a bytea.
CREATE TABLE stat_durations (
    bucket     INTEGER NOT NULL,
    channel    TEXT COLLATE "C" NOT NULL,
    account    TEXT COLLATE "C" NOT NULL,
    agent      TEXT COLLATE "C" NOT NULL,
    frt        BYTEA NOT NULL DEFAULT ''::bytea,
    response   BYTEA NOT NULL DEFAULT ''::bytea,
    resolution BYTEA NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (channel, account, agent, bucket)
);

-- Open conversations: +1 at an open or reopen, -1 at a close, by assignee, per quarter
-- hour and summed per day (day = bucket // 96, UTC).
CREATE TABLE stat_open (
    bucket  INTEGER NOT NULL,
    channel TEXT COLLATE "C" NOT NULL,
    account TEXT COLLATE "C" NOT NULL,
    agent   TEXT COLLATE "C" NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (bucket, channel, account, agent)
);
CREATE TABLE stat_open_days (
    day     INTEGER NOT NULL,
    channel TEXT COLLATE "C" NOT NULL,
    account TEXT COLLATE "C" NOT NULL,
    agent   TEXT COLLATE "C" NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (day, channel, account, agent)
);

-- Customers who wrote (contact rate): customer is a signed 64-bit hash of the id.
CREATE TABLE stat_writers (
    bucket       INTEGER NOT NULL,
    channel      TEXT COLLATE "C" NOT NULL,
    account      TEXT COLLATE "C" NOT NULL,
    customer     BIGINT NOT NULL,
    prev_any     INTEGER,
    prev_channel INTEGER,
    prev_account INTEGER,
    PRIMARY KEY (bucket, channel, account, customer)
);
CREATE INDEX stat_writers_by_customer ON stat_writers(customer, channel, account, bucket);

-- What the metrics remember of each conversation, as JSON.
CREATE TABLE stat_conversations (
    id    TEXT COLLATE "C" PRIMARY KEY,
    state TEXT NOT NULL
);
