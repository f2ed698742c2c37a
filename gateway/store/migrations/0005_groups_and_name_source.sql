-- Group chats (a per-account `groups = true`): the group is the conversation, each poster
-- a customer. A 1:1 conversation has no group_id; the partial index costs those nothing.
ALTER TABLE conversations ADD COLUMN group_id TEXT;
ALTER TABLE conversations ADD COLUMN group_name TEXT;
CREATE INDEX conversations_by_group ON conversations(group_id) WHERE group_id IS NOT NULL;

-- Which identity ("kind:address") gave the customer's name: that identity may change it
-- (a renamed profile), another one may not (names would flap between channels), and
-- removing it takes the name with it.
ALTER TABLE customers ADD COLUMN name_source TEXT;
