-- Mirrors SQLite 0005: group chats, and which identity gave the customer's name.
ALTER TABLE conversations ADD COLUMN group_id TEXT COLLATE "C";
ALTER TABLE conversations ADD COLUMN group_name TEXT;
CREATE INDEX conversations_by_group ON conversations(group_id) WHERE group_id IS NOT NULL;

ALTER TABLE customers ADD COLUMN name_source TEXT;
