-- Automation (issue 23, docs/automation.md): a conversation's CSAT answer and the survey
-- waiting for one, and the keys of automatic sends already queued (an acknowledgement per
-- conversation and per customer window, a rule's reply, a survey per close), so an event
-- seen again after a restart never sends twice.
ALTER TABLE conversations ADD COLUMN csat TEXT;
ALTER TABLE conversations ADD COLUMN survey TEXT;
CREATE TABLE automatic_sends (
    key        TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
