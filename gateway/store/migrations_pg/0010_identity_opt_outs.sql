-- Mirrors SQLite 0010: opt-outs recorded on the identity (an SMS customer's STOP, issue
-- 18), a JSON list of {"channel", "account", "keyword", "at"}; NULL when there is none.
ALTER TABLE identities ADD COLUMN opt_outs TEXT;
