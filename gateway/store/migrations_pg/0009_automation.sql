-- Mirrors SQLite 0009 (automation, issue 23, docs/automation.md): a conversation's CSAT
-- answer and the survey waiting for one, and the keys of automatic sends already queued,
-- so an event seen again after a restart (on any instance) never sends twice.
ALTER TABLE conversations ADD COLUMN csat TEXT;
ALTER TABLE conversations ADD COLUMN survey TEXT;
CREATE TABLE automatic_sends (
    key        TEXT COLLATE "C" PRIMARY KEY,
    message_id TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);
